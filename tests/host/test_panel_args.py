"""The panel in a real gradio 3.41 Blocks, argument parsing (UI positional, API dict), settings, install.py."""
from __future__ import annotations

import sys

import pytest

from i4vgen_ext.settings import METHOD_FIELDS, SettingsError
from i4vgen_ext.webui.args import UI_ORDER, is_enabled, parse_script_args

FULL = [True, "paper", 5, 0.5, "4,2", 0.8, "clip", "/models/clip", "none", 2, True]


def test_panel_controls_follow_ui_order_with_safe_defaults(host):
    script = host.script("txt2img", "I4VGen")
    controls = host.runners["txt2img"].inputs[script.args_from:script.args_to]
    assert len(controls) == len(UI_ORDER) == len(METHOD_FIELDS) + 2
    defaults = host.defaults["txt2img"][script.args_from:script.args_to]
    assert defaults[0] is False  # API requests that do not mention I4VGen leave it off
    assert dict(zip(UI_ORDER, defaults))["preset"] == "official"
    assert dict(zip(UI_ORDER, defaults))["candidates"] == 16
    assert parse_script_args(defaults).enable is False
    assert script.infotext_fields and all(callable(key) for _, key in script.infotext_fields)


def test_ui_can_be_built_again_without_side_effects(host):
    import gradio as gr

    from i4vgen_ext.webui.ui import candidate_store
    from modules import script_callbacks, shared

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
