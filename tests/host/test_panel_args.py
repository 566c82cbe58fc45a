"""The panel in a real gradio 3.41 Blocks, argument parsing (UI positional, API dict), settings, install.py."""
from __future__ import annotations

import sys

import pytest

from i4vgen_ext.core.settings import METHOD_FIELDS, SettingsError
from i4vgen_ext.webui.args import UI_ORDER, is_enabled, parse_script_args
from i4vgen_ext.webui.fields import EXTRA_NAMES

from .conftest import b64, gradient

FULL = [True, "paper", 5, 0.5, "4,2", 0.8, "clip", "clip-vit-large-patch14", "none", 2, True]


def test_panel_controls_follow_ui_order_with_safe_defaults(host):
    script = host.script("txt2img", "I4VGen")
    controls = host.runners["txt2img"].inputs[script.args_from:script.args_to]
    assert len(controls) == len(UI_ORDER) == len(METHOD_FIELDS) + 2 + len(EXTRA_NAMES)
    assert UI_ORDER[-len(EXTRA_NAMES):] == EXTRA_NAMES  # appended: older positional API calls still line up
    defaults = host.defaults["txt2img"][script.args_from:script.args_to]
    assert defaults[0] is False  # API requests that do not mention I4VGen leave it off
    named = dict(zip(UI_ORDER, defaults))
    assert named["preset"] == "official" and named["candidates"] == 16
    assert named["mode"] == "i4vgen" and named["anchor_image"] is None and named["anchor_sample"] is False
    assert {name: named[name] for name in EXTRA_NAMES if name.startswith("evs_")} == {
        "evs_strength": 0.4, "evs_t2v_step": -1, "evs_video_strength": 0.3, "evs_video_steps": -1,
        "evs_fresh_bridge_noise": True, "evs_inversion": False, "evs_sfi": False, "evs_sfi_gamma": 0.8,
        "evs_sfi_layers": "deep"}
    request = parse_script_args(defaults)
    assert request.enable is False and request.mode == "i4vgen" and request.anchor_image is None
    assert script.infotext_fields and all(callable(key) for _, key in script.infotext_fields)


def test_ui_can_be_built_again_without_side_effects(host):
    import gradio as gr
    from modules import script_callbacks, shared

    from i4vgen_ext.webui.ui import candidate_store

    script = host.script("txt2img", "I4VGen")
    candidate_store.put("txt2img", [("x", "y")])
    opts_before = dict(shared.opts.data)
    callbacks_before = {k: len(v) for k, v in script_callbacks.callbacks.items()}
    with gr.Blocks():
        first = script.ui(False)
    with gr.Blocks():
        second = script.ui(False)
    assert [c.value for c in first] == [c.value for c in second]
    assert candidate_store.get("txt2img") == [("x", "y")]
    assert dict(shared.opts.data) == opts_before
    assert {k: len(v) for k, v in script_callbacks.callbacks.items()} == callbacks_before


def test_settings_section_registered(host):
    from modules import shared

    for key in ("i4vgen_reward_model_dir", "i4vgen_keep_ranker_loaded", "i4vgen_default_preset"):
        assert shared.opts.data_labels[key].section == ("i4vgen", "I4VGen")
    assert shared.opts.i4vgen_default_preset == "official"


def test_positional_and_dict_args_parse_to_the_same_request():
    positional = parse_script_args(FULL)
    as_dict = parse_script_args([dict(zip(UI_ORDER, FULL))])
    assert positional == as_dict
    assert positional.enable and positional.return_candidates
    assert positional.method["candidates"] == 5 and positional.method["alpha_schedule"] == "4,2"


def test_dict_missing_keys_take_defaults_and_json_types_are_coerced():
    request = parse_script_args([{"enable": "true", "candidates": 4.0}])
    assert request.enable is True and request.return_candidates is False
    assert request.method == {"candidates": 4}
    assert is_enabled([{"enable": True}]) and not is_enabled([{"candidates": 3}]) and not is_enabled([False])


@pytest.mark.parametrize("values, key", [
    ({"enable": True, "candidatez": 3}, "candidatez"),
    ({"enable": True, "candidates": 0}, "candidates"),
    ({"enable": True, "nivsds_fraction": 1.5}, "nivsds_fraction"),
    ({"enable": True, "alpha_schedule": "1,-2"}, "alpha_schedule"),
    ({"enable": True, "ranker": "hps"}, "ranker"),
    ({"enable": "maybe"}, "enable"),
    ({"enable": True, "anchor_index": 2.5}, "anchor_index"),
    ({"enable": True, "mode": "plain"}, "mode"),
    ({"enable": True, "anchor_image": 12}, "anchor_image"),
    ({"enable": True, "anchor_image": "data:image/png;base64,%%%"}, "anchor_image"),
    ({"enable": True, "anchor_sample": "yes"}, "anchor_sample"),
    ({"enable": True, "evs_strength": 0}, "evs_strength"),
    ({"enable": True, "evs_video_strength": 1.5}, "evs_video_strength"),
    ({"enable": True, "evs_t2v_step": -2}, "evs_t2v_step"),
    ({"enable": True, "evs_video_steps": 1.5}, "evs_video_steps"),
    ({"enable": True, "evs_inversion": "maybe"}, "evs_inversion"),
    ({"enable": True, "evs_sfi": True}, "evs_sfi"),  # SFI injects what the inversion records: needs inversion
    ({"enable": True, "evs_sfi": "maybe", "evs_inversion": True}, "evs_sfi"),
    ({"enable": True, "evs_sfi_gamma": 1.5}, "evs_sfi_gamma"),
    ({"enable": True, "evs_sfi_gamma": "high"}, "evs_sfi_gamma"),
    ({"enable": True, "evs_sfi_layers": "middle block"}, "evs_sfi_layers"),
    ({"enable": True, "evs_sfi_layers": 3}, "evs_sfi_layers"),
])
def test_bad_values_name_their_key(values, key):
    with pytest.raises(SettingsError) as error:
        parse_script_args([values])
    assert error.value.name == key and key in str(error.value)


def test_too_many_positional_values_are_refused():
    with pytest.raises(SettingsError):
        parse_script_args(FULL + [1])


def test_install_adds_only_missing_packages_under_host_pins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    sys.modules.pop("install", None)
    import install

    reqs = install.requirements()
    names = [install.split(r)[0] for r in reqs]
    assert "transformers" in names and "torch" in names  # read from pyproject: dependencies + rank extra
    present = {"torch", "numpy", "Pillow", "safetensors", "transformers"}
    calls = []

    def run_pip(command, desc=None):
        constraints = command.split('-c "')[1].rstrip('"')
        calls.append((command, open(constraints).read()))

    done = install.install(run_pip, lambda name: name in present, reqs, pins=lambda: ["transformers==4.30.2", "numpy==1.26.2"])
    assert done == ["tqdm>=4.60"]
    assert len(calls) == 1 and calls[0][0].startswith('install "tqdm>=4.60"')
    assert "transformers==4.30.2" in calls[0][1] and "numpy==1.26.2" in calls[0][1]
    assert install.install(run_pip, lambda name: True, reqs) == []  # nothing missing: pip never runs
    assert install.missing(["torch>=2.1"], lambda name: False) == []  # torch is the WebUI's choice


def test_anchor_image_forms_parse_to_the_same_request():
    image = gradient(80, 48)
    forms = [image, b64(image), "data:image/png;base64," + b64(image), "data:image/png;base64,\n" + b64(image)[:40]
             + "\n" + b64(image)[40:], b64(image.convert("RGBA"))]
    requests = [parse_script_args([{"enable": True, "anchor_image": form}]) for form in forms]
    assert all(request == requests[0] for request in requests)
    assert requests[0].anchor_image.mode == "RGB" and requests[0].anchor_label.startswith("80x48 sha256:")
    assert parse_script_args([{"enable": True, "anchor_image": ""}]).anchor_image is None  # empty: no image


def test_evs_settings_parse_from_api_types():
    request = parse_script_args([{"enable": True, "mode": "i4vgen+evs", "evs_strength": "0.5", "evs_t2v_step": 2.0,
                                  "evs_video_steps": "3", "evs_fresh_bridge_noise": "false", "evs_inversion": 1}])
    assert request.runs_i4vgen and request.runs_evs
    assert (request.evs.strength, request.evs.t2v_step, request.evs.video_strength, request.evs.video_steps,
            request.evs.fresh_bridge_noise, request.evs.inversion) == (0.5, 2, 0.3, 3, False, True)
    assert request.extra_record() == {"mode": "i4vgen+evs", "evs_strength": 0.5, "evs_t2v_step": 2,
                                      "evs_video_strength": 0.3, "evs_video_steps": 3,
                                      "evs_fresh_bridge_noise": False, "evs_inversion": True, "evs_sfi": False,
                                      "evs_sfi_gamma": 0.8, "evs_sfi_layers": "deep"}
    sfi = parse_script_args([{"enable": True, "mode": "evs", "evs_inversion": "true", "evs_sfi": "true",
                              "evs_sfi_gamma": "0.5", "evs_sfi_layers": "middle_block, output_blocks.3"}])
    assert (sfi.evs.sfi, sfi.evs.sfi_gamma, sfi.evs.sfi_layers) == (True, 0.5, "middle_block, output_blocks.3")
    assert parse_script_args([{"enable": True, "evs_sfi_gamma": 1}]).evs.sfi_gamma == 1.0
    assert parse_script_args([{"enable": True}]).extra_record() == {"mode": "i4vgen"}
