"""Stand-in of sd-webui-controlnet 1.1.455 ``scripts/controlnet.py`` ``Script`` (title "ControlNet", always on, three
units as ``gr.State``): ``process`` -> ``controlnet_main_entry`` (skipped with an SDXL refiner) restores the previous
network, takes the enabled units (API dicts converted), loads each unit's model, builds its control with
``get_control`` (the unit's image, or an AnimateDiff batch folder read per frame through its batch modifiers,
resized to the job's size and to the hires size with Hires. fix, preprocessed, ``h w c -> 1 c h w`` / 255, moved to
the CPU for AnimateDiff batches), one image -> the (1, 3, H, W) control, an AnimateDiff batch -> ``ad_process_control``
(the frames concatenated, doubled to [cond | uncond] under ``batch_cond_uncond``; a SparseCtrl model becomes
``ControlNet``-typed), ``ControlParams`` (soft injection unless "Balanced", cfg injection for "ControlNet is more
important"), then ``UnetHook(lowvram=any unit's low_vram).hook``. ``postprocess`` restores the network (detected
maps are not appended).

Models are told apart by name here (the real extension guesses a model's type from its weights); preprocessors:
"none", "canny" (a luminance threshold), "invert", and names that exist only to be refused ("inpaint_only",
"reference_only" needs no model, "ip-adapter_clip_sd15", "revision_clipvision")."""
import gradio as gr
import numpy as np
import torch
from modules import scripts, shared
from modules.processing import StableDiffusionProcessingTxt2Img
from PIL import Image
from scripts.enums import ControlMode, ControlModelType, HiResFixOption
from scripts.external_code import ControlNetUnit, get_all_units_in_processing
from scripts.hook import ControlParams, UnetHook
from tinymodel import CHANNELS

MODELS = {  # stand-in model name -> type (the real extension reads the type from the weights)
    "control_v11p_sd15_canny [tiny]": ControlModelType.ControlNet,
    "control_v11f1p_sd15_depth [tiny]": ControlModelType.ControlNet,
    "control_lora_rank128_canny [tiny]": ControlModelType.ControlLoRA,
    "control_sd15_sparsectrl_rgb [tiny]": ControlModelType.SparseCtrl,
    "ip-adapter_sd15 [tiny]": ControlModelType.IPAdapter,
    "mystery_model [tiny]": ControlModelType.IPAdapter,  # refused by type only: its name says nothing
    "motion_hint [tiny]": ControlModelType.SparseCtrl,  # refused by type only
}
PREPROCESSORS = ("none", "canny", "invert", "inpaint_only", "reference_only", "ip-adapter_clip_sd15",
                 "revision_clipvision")


class TinyHintNet(torch.nn.Module):
    """Stands for cldm's ``ControlNet``: the hint, pooled to the latent size, to a residual of the UNet's width."""

    def __init__(self, seed):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, CHANNELS, 1)

    def forward(self, hint):
        return self.conv(torch.nn.functional.avg_pool2d(hint * 2 - 1, 8))


class SparseCtrl(TinyHintNet):
    pass


class ControlModel(torch.nn.Module):
    """Stands for ``PlugableControlModel``: ``control_model`` inside, called with ``x, hint, timesteps, context``."""

    def __init__(self, name, kind):
        super().__init__()
        seed = sum(map(ord, name))
        self.control_model = SparseCtrl(seed) if kind == ControlModelType.SparseCtrl else TinyHintNet(seed)

    def forward(self, x, hint, timesteps, context, **kwargs):
        return self.control_model(hint.to(x.dtype))

    def reset(self):
        pass


def preprocess(module, image):
    if module not in PREPROCESSORS:
        raise AssertionError(f"unknown preprocessor {module}")
    if module == "canny":
        return np.repeat(((image.mean(axis=2, keepdims=True) > 127) * 255).astype(np.uint8), 3, axis=2)
    if module == "invert":
        return 255 - image
    return image


def to_control(image, module, width, height, animatediff_batch):
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    resized = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS))
    control = torch.from_numpy(preprocess(module, resized).copy()).float().div(255).permute(2, 0, 1).unsqueeze(0)
    return control.cpu() if animatediff_batch else control


def get_control(p, unit):
    if unit.is_animate_diff_batch:
        files = shared.listfiles(unit.batch_images)
        for modifier in unit.batch_modifiers:
            files = modifier(files, p)
        unit.batch_image_files = files
        images = [Image.open(f) for f in files]
    else:
        if unit.image is None:
            raise ValueError("controlnet is enabled but no input image is given")
        images = [unit.image]
    high_res_fix = isinstance(p, StableDiffusionProcessingTxt2Img) and getattr(p, 'enable_hr', False)
    controls = [to_control(i, unit.module, p.width, p.height, unit.is_animate_diff_batch) for i in images]
    hr_controls = [to_control(i, unit.module, int(p.width * p.hr_scale), int(p.height * p.hr_scale),
                              unit.is_animate_diff_batch) if high_res_fix else None for i in images]
    return controls, hr_controls


class Script(scripts.Script):
    def __init__(self):
        self.latest_network = None
        self.enabled_units = []
        self.latest_model_hash = ""

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return tuple(gr.State(value=ControlNetUnit()) for _ in range(3))

    def controlnet_main_entry(self, p):
        unet = p.sd_model.model.diffusion_model
        if self.latest_network is not None:
            self.latest_network.restore()
        self.enabled_units = [u for u in get_all_units_in_processing(p) if u.enabled]
        if not self.enabled_units:
            self.latest_network = None
            return
        forward_params = []
        for unit in self.enabled_units:
            if unit.module == "reference_only":
                model_net, kind = None, ControlModelType.AttentionInjection
            else:
                kind = MODELS[unit.model]
                model_net = ControlModel(unit.model, kind)
            controls, hr_controls = get_control(p, unit)
            if len(controls) == 1 and kind != ControlModelType.SparseCtrl:
                control, hr_control = controls[0], hr_controls[0]
            else:
                def ad_process_control(cc):
                    c = torch.cat(cc, dim=0)
                    if shared.opts.batch_cond_uncond and not unit.accepts_multiple_inputs:
                        c = torch.cat([c, c], dim=0)
                    return c

                control = ad_process_control(controls)
                hr_control = ad_process_control(hr_controls) if hr_controls[0] is not None else None
                if kind == ControlModelType.SparseCtrl:
                    kind = ControlModelType.ControlNet
            high_res_fix = isinstance(p, StableDiffusionProcessingTxt2Img) and getattr(p, 'enable_hr', False)
            forward_params.append(ControlParams(
                control_model=model_net, preprocessor=dict(name=unit.module), hint_cond=control, weight=unit.weight,
                guidance_stopped=False, start_guidance_percent=unit.guidance_start,
                stop_guidance_percent=unit.guidance_end, advanced_weighting=None, control_model_type=kind,
                hr_hint_cond=hr_control, global_average_pooling=False,
                hr_option=unit.hr_option if high_res_fix else HiResFixOption.BOTH,
                soft_injection=unit.control_mode != ControlMode.BALANCED,
                cfg_injection=unit.control_mode == ControlMode.CONTROL))
        self.latest_network = UnetHook(lowvram=any(unit.low_vram for unit in self.enabled_units))
        self.latest_network.hook(model=unet, sd_ldm=p.sd_model, control_params=forward_params, process=p)

    def process(self, p, *args, **kwargs):
        if getattr(p, 'refiner_checkpoint', None) is None:
            self.controlnet_main_entry(p)

    def postprocess(self, p, processed, *args):
        self.enabled_units = []
        if self.latest_network is None:
            return
        self.latest_network.restore()
        self.latest_network = None
