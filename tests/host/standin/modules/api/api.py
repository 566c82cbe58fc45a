"""Follows ``modules/api/api.py`` ``Api.init_default_script_args`` (``ui()`` called inside a throwaway
``gr.Blocks()``, each control's ``.value`` as default), ``Api.init_script_args`` (``alwayson_scripts`` args copied
positionally and unconverted, unknown script -> 422) and ``text2imgapi`` (``p.is_api = True``, ``p.script_args =
tuple(...)``, ``process_images`` inside ``state.begin``/``end``, ``info = processed.js()``)."""
import base64
import io

from modules import processing
from modules.shared import state


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def init_default_script_args(script_runner):
    import gradio as gr

    last_arg_index = 1
    for script in script_runner.scripts:
        if last_arg_index < script.args_to:
            last_arg_index = script.args_to
    script_args = [None] * last_arg_index
    script_args[0] = 0
    with gr.Blocks():
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                ui_default_values = [elem.value for elem in script.ui(script.is_img2img)]
                script_args[script.args_from:script.args_to] = ui_default_values
    return script_args


def init_script_args(alwayson_scripts, default_script_args, script_runner):
    script_args = default_script_args.copy()
    for name, entry in (alwayson_scripts or {}).items():
        script = next((s for s in script_runner.alwayson_scripts if s.title().lower() == name.lower()), None)
        if script is None:
            raise HTTPException(422, f"always on script {name} not found")
        if "args" in entry:
            for idx in range(0, min(script.args_to - script.args_from, len(entry["args"]))):
                script_args[script.args_from + idx] = entry["args"][idx]
    return script_args


def encode_pil_to_base64(image):
    """As ``modules/api/api.py`` with ``samples_format`` png: the image's text ``info`` items become PNG text chunks."""
    from PIL import PngImagePlugin

    if isinstance(image, str):
        return image
    buffer = io.BytesIO()
    metadata = PngImagePlugin.PngInfo()
    use_metadata = False
    for key, value in image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            metadata.add_text(key, value)
            use_metadata = True
    image.save(buffer, format="PNG", pnginfo=(metadata if use_metadata else None))
    return base64.b64encode(buffer.getvalue()).decode()


def text2imgapi(request, script_runner, default_script_args):
    """``request``: the JSON body as a dict. Returns the response dict, or raises like the API would."""
    request = dict(request)
    alwayson = request.pop("alwayson_scripts", None)
    script_args = init_script_args(alwayson, default_script_args, script_runner)
    p = processing.StableDiffusionProcessingTxt2Img(**request)
    p.is_api = True
    p.scripts = script_runner
    try:
        state.begin(job="scripts_txt2img")
        p.script_args = tuple(script_args)
        processed = processing.process_images(p)
    finally:
        state.end()
    return {"images": [encode_pil_to_base64(i) for i in processed.images], "info": processed.js(), "p": p}
