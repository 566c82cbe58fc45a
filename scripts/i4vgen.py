"""I4VGen for AUTOMATIC1111 + sd-webui-animatediff: the one script A1111 loads from this extension.

Only the ``Script`` class lives here; the host glue is in ``i4vgen_ext.webui`` and the method in ``i4vgen_ext``.
A1111 puts the extension root on ``sys.path`` while this file loads (``modules/script_loading.py``), which is when
the ``i4vgen_ext`` package is imported."""
from __future__ import annotations

from modules import script_callbacks, scripts

from i4vgen_ext.webui import job as i4vgen_job
from i4vgen_ext.webui.ranking import RankerCache
from i4vgen_ext.webui.ui import build_panel, candidate_store, register_settings

ranker_cache = RankerCache()


class I4VGenScript(scripts.Script):
    def __init__(self) -> None:
        self.infotext_fields = []
        self.paste_field_names = []
        self.plan = None

    def title(self) -> str:
        return "I4VGen"

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool):
        panel = build_panel(self.elem_id, is_img2img, i4vgen_job.option("i4vgen_default_preset", "official"))
        self.infotext_fields = panel.infotext_fields
        return panel.controls

    def setup(self, p, *args):
        if i4vgen_job.is_enabled(args):
            i4vgen_job.adopt_api_units(p)

    def process(self, p, *args):
        self.plan = i4vgen_job.prepare(p, args)

    def process_batch(self, p, *args, **kwargs):
        if self.plan is not None:
            i4vgen_job.install_sampler(p, self.plan, ranker_cache)

    def postprocess(self, p, processed, *args):
        plan, self.plan = self.plan, None
        if plan is None:
            return
        gallery = i4vgen_job.finish(p, processed, plan)
        candidate_store.put("img2img" if self.is_img2img else "txt2img", gallery)


script_callbacks.on_ui_settings(register_settings)
