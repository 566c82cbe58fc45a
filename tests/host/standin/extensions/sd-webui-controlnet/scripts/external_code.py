"""Stand-in of sd-webui-controlnet 1.1.455 ``internal_controlnet/args.py`` ``ControlNetUnit`` (the fields I4VGen and
AnimateDiff read, same names and defaults; ``from_dict`` ignores unknown keys like pydantic's ``extra = "ignore"``;
``is_animate_diff_batch``) and ``internal_controlnet/external_code.py`` (``find_cn_script``,
``get_all_units_in_processing`` converting API dicts)."""
import copy

from scripts.enums import ControlMode, HiResFixOption, InputMode


class ControlNetUnit:
    FIELDS = dict(is_ui=False, input_mode=InputMode.SIMPLE, batch_images=None, enabled=False, module="none",
                  model="None", weight=1.0, image=None, resize_mode="Crop and Resize", low_vram=False,
                  processor_res=-1, threshold_a=-1, threshold_b=-1, guidance_start=0.0, guidance_end=1.0,
                  pixel_perfect=False, control_mode=ControlMode.BALANCED, hr_option=HiResFixOption.BOTH,
                  save_detected_map=True, advanced_weighting=None, effective_region_mask=None,
                  batch_mask_dir=None, animatediff_batch=False, batch_modifiers=None, batch_image_files=None,
                  batch_keyframe_idx=None)

    def __init__(self, **values):
        for name, default in self.FIELDS.items():
            setattr(self, name, copy.copy(values.get(name, default)))
        if isinstance(self.control_mode, str):
            self.control_mode = next(m for m in ControlMode if m.value == self.control_mode or m.name == self.control_mode)
        if isinstance(self.input_mode, str):
            self.input_mode = InputMode[self.input_mode.upper()]
        self.batch_modifiers = list(self.batch_modifiers or [])
        self.batch_image_files = list(self.batch_image_files or [])

    @classmethod
    def from_dict(cls, values):
        return cls(**{k: v for k, v in values.items() if k in cls.FIELDS})

    def copy(self):
        return copy.copy(self)

    @property
    def is_animate_diff_batch(self):
        return getattr(self, "animatediff_batch", False)

    @property
    def accepts_multiple_inputs(self):
        return "ip-adapter" in self.module


def find_cn_script(script_runner):
    if script_runner is None:
        return None
    for script in script_runner.alwayson_scripts:
        if script.title() == "ControlNet":
            return script
    return None


def to_processing_unit(unit):
    return ControlNetUnit.from_dict(unit) if isinstance(unit, dict) else unit


def get_all_units_in_processing(p):
    script = find_cn_script(p.scripts)
    if script is None:
        return []
    return [to_processing_unit(u) for u in p.script_args[script.args_from:script.args_to] if u is not None]
