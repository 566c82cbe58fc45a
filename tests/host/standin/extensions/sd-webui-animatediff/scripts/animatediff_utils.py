"""Stand-in of sd-webui-animatediff ``scripts/animatediff_utils.py`` ``get_animatediff_arg``: finds the script by
title, converts an API dict with ``AnimateDiffProcess(**dict)`` (unknown keys raise TypeError) and writes it back
into a list copy of ``p.script_args``; ``get_controlnet_units`` (under the API, dict units become ControlNet's units, those without an image batch
units with the dict's ``batch_images``, written back into ``p.script_args``, which fails on the API's tuple; and
the API's units are returned as given, dicts, on which ``set_p`` then fails: as a88e889 does)."""


def get_animatediff_arg(p):
    if not p.scripts:
        return None
    for script in p.scripts.alwayson_scripts:
        if script.title().lower() == "animatediff":
            animatediff_arg = p.script_args[script.args_from]
            if isinstance(animatediff_arg, dict):
                from scripts.animatediff_ui import AnimateDiffProcess
                animatediff_arg = AnimateDiffProcess(**animatediff_arg)
                p.script_args = list(p.script_args)
                p.script_args[script.args_from] = animatediff_arg
            return animatediff_arg
    return None


def get_controlnet_units(p):
    if not p.scripts:
        return []
    for script in p.scripts.alwayson_scripts:
        if script.title().lower() == "controlnet":
            cn_units = p.script_args[script.args_from:script.args_to]
            if p.is_api and len(cn_units) > 0 and isinstance(cn_units[0], dict):
                from scripts.enums import InputMode

                from scripts import external_code
                cn_units_dataclass = external_code.get_all_units_in_processing(p)
                for cn_unit_dict, cn_unit_dataclass in zip(cn_units, cn_units_dataclass):
                    if cn_unit_dataclass.image is None:
                        cn_unit_dataclass.input_mode = InputMode.BATCH
                        cn_unit_dataclass.batch_images = cn_unit_dict.get("batch_images", None)
                p.script_args[script.args_from:script.args_to] = cn_units_dataclass
            return [x for x in cn_units if x.enabled] if not p.is_api else cn_units
    return []
