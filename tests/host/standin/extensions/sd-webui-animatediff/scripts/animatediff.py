"""Stand-in of sd-webui-animatediff ``scripts/animatediff.py`` ``AnimateDiffScript`` (A1111 branch): ``ui``
returns a one-element tuple with ``gr.State(value=AnimateDiffProcess)``; ``before_process`` converts API dicts,
always calls ``set_ad_params``, and when enabled injects, ``set_p``s, parses prompt travel and writes the ``AnimateDiff`` infotext;
``postprocess`` restores and writes the outputs. Registers its CFG-denoiser hook at import."""
import gradio as gr
from modules import script_callbacks, scripts
from scripts.animatediff_infv2v import AnimateDiffInfV2V
from scripts.animatediff_mm import mm_animatediff as motion_module
from scripts.animatediff_output import AnimateDiffOutput
from scripts.animatediff_prompt import AnimateDiffPromptSchedule
from scripts.animatediff_ui import AnimateDiffProcess
from scripts.animatediff_utils import get_animatediff_arg

motion_module.set_script_dir(scripts.basedir())


class AnimateDiffScript(scripts.Script):
    def __init__(self):
        self.hacked = False
        self.infotext_fields = []
        self.paste_field_names = []

    def title(self):
        return "AnimateDiff"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return (gr.State(value=AnimateDiffProcess),)

    def before_process(self, p, params):
        if p.is_api:
            params = get_animatediff_arg(p)
        motion_module.set_ad_params(params)
        if params.enable:
            motion_module.inject(p.sd_model, params.model)
            params.set_p(p)
            params.prompt_scheduler = AnimateDiffPromptSchedule(p, params)
            p.extra_generation_params["AnimateDiff"] = params.get_dict(False)
            self.hacked = True
        elif self.hacked:
            motion_module.restore(p.sd_model)
            self.hacked = False

    def postprocess(self, p, res, params):
        if params.enable:
            motion_module.restore(p.sd_model)
            self.hacked = False
            AnimateDiffOutput().output(p, res, params)


script_callbacks.on_cfg_denoiser(AnimateDiffInfV2V.animatediff_on_cfg_denoiser)
