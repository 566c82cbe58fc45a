"""Infotext written into the frames (and AnimateDiff's GIF), pasted back through the host's paste mechanism, and
the /sdapi/v1/txt2img path with dict and positional args."""
from __future__ import annotations

import base64
import io
import json

import gradio as gr
import pytest
from PIL import Image

from i4vgen_ext.webui import job as i4vgen_job

from .conftest import ad_args, gif_frames, make_p, pasted_values, run, ui_args


def test_infotext_written_and_pasted_back(host, stub):
    from modules import infotext_utils

    settings = [True, "paper", 3, 0.5, "4,2", 0.75, "imagereward", "", "none", -1, False]
    p = make_p(host, i4vgen=settings, ad=ad_args(batch_size=8))
    res = run(p)
    gif_comment = Image.open(res.images[0]).info["comment"].decode()
    for text in (gif_comment, p.extra_generation_params and res.infotexts[0]):
        params = infotext_utils.parse_generation_parameters(text)
        record = json.loads(params["I4VGen"])
        assert record["preset"] == "paper" and record["alpha_schedule"] == "4,2"
        values = pasted_values(host, text)
        chosen = record["chosen_anchor"]
        assert values == {"enable": True, "preset": "paper", "candidates": 3.0, "nivsds_fraction": 0.5,
                          "alpha_schedule": "4,2", "regen_strength": 0.75, "ranker": "imagereward",
                          "ranker_fallback": "none", "anchor_index": float(chosen), "return_candidates": False,
                          # an I4VGen-only run pastes the WebUI's own settings as their defaults
                          "mode": "i4vgen", "anchor_sample": False, "evs_strength": 0.4, "evs_t2v_step": -1.0,
                          "evs_video_strength": 0.3, "evs_video_steps": -1.0, "evs_fresh_bridge_noise": True,
                          "evs_inversion": False, "evs_sfi": False, "evs_sfi_gamma": 0.8, "evs_sfi_layers": "deep",
                          "anchor_image": gr.update(value=None)}  # no image: cleared
    # the pasted manual index reproduces the same video without ranking
    again = run(make_p(host, i4vgen=[True, "paper", 3, 0.5, "4,2", 0.75, "imagereward", "", "none", chosen, False],
                       ad=ad_args(batch_size=8)))
    assert gif_frames(again.images[0]) == gif_frames(res.images[0])
    assert json.loads(again.extra_generation_params["I4VGen"])["ranked_by"] == "manual"


def test_pasting_a_plain_infotext_switches_i4vgen_off(host):
    values = pasted_values(host, "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    assert values["enable"] is False and values["candidates"] is None  # None: the field is left as it is


def test_api_dict_args_info_and_candidates(host, stub):
    from modules.api import api

    body = {"prompt": "a corgi", "negative_prompt": "blurry", "seed": 7, "steps": 4, "cfg_scale": 5.0, "width": 64,
            "height": 64, "sampler_name": "Euler", "do_not_save_samples": True,
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8, format=["GIF"])]},
                                 "I4VGen": {"args": [{"enable": True, "candidates": 2, "return_candidates": True}]}}}
    response = api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    info = json.loads(response["info"])
    record = json.loads(info["extra_generation_params"]["I4VGen"])
    assert record["candidates"] == 2 and record["preset"] == "official" and record["unet_calls"]["total"] == 4 + 3 + 4
    assert "I4VGen: " in info["infotexts"][0] and 'unet_calls' in info["infotexts"][0] and "comments" not in info
    gif = base64.b64decode(response["images"][0])
    assert gif[:3] == b"GIF"
    candidates = [Image.open(io.BytesIO(base64.b64decode(b))) for b in response["images"][1:]]
    assert len(candidates) == 2 and all(c.size == (64, 64) for c in candidates)
    assert "sample" not in vars(response["p"])


def test_api_positional_args(host, stub):
    from modules.api import api

    body = {"prompt": "a corgi", "seed": 7, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8)]},
                                 "I4VGen": {"args": [True, "official", 2]}}}
    response = api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    record = json.loads(json.loads(response["info"])["extra_generation_params"]["I4VGen"])
    assert record["candidates"] == 2 and record["return_candidates"] is False
    assert len(response["images"]) == 1  # just the video: candidates were not asked for


def test_api_unknown_key_fails_before_sampling_naming_the_key(host, stub):
    from modules.api import api

    body = {"prompt": "a corgi", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8)]},
                                 "I4VGen": {"args": [{"enable": True, "nivsds": 0.5}]}}}
    with pytest.raises(i4vgen_job.I4VGenError, match="'nivsds'"):
        api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    assert host.model.unet_log == []


def test_api_request_without_i4vgen_is_a_plain_animatediff_job(host, monkeypatch):
    from modules.api import api

    called = []
    monkeypatch.setattr(i4vgen_job, "sample_batch", lambda *a: called.append(a))
    body = {"prompt": "a corgi", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8)]}}}
    response = api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    assert not called and "I4VGen" not in json.loads(response["info"])["extra_generation_params"]


@pytest.mark.parametrize("args", ["enable", "{enable: true}"])
def test_api_args_that_are_a_string_are_refused_before_sampling(host, stub, args):
    from modules.api import api

    body = {"prompt": "a corgi", "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8)]}, "I4VGen": {"args": args}}}
    with pytest.raises(i4vgen_job.I4VGenError, match=r"bad argument 'args': .*must be a list"):
        api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    assert host.model.unet_log == []


def test_candidates_carry_png_parameters_that_paste_back_with_their_anchor(host, stub):
    from modules.api import api

    body = {"prompt": "a corgi", "negative_prompt": "blurry", "seed": 7, "steps": 4, "cfg_scale": 5.0, "width": 64,
            "height": 64, "sampler_name": "Euler",
            "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8, format=["GIF"])]},
                                 "I4VGen": {"args": [{"enable": True, "candidates": 3, "return_candidates": True}]}}}
    response = api.text2imgapi(body, host.runners["txt2img"], host.defaults["txt2img"])
    info = json.loads(response["info"])
    chosen = json.loads(info["extra_generation_params"]["I4VGen"])["chosen_anchor"]
    for k, encoded in enumerate(response["images"][1:]):
        text = Image.open(io.BytesIO(base64.b64decode(encoded))).info["parameters"]
        assert text == info["infotexts"][-3 + k] and "Seed: 7" in text  # appended after the frames' infotexts
        pasted = pasted_values(host, text)
        assert pasted["enable"] is True and pasted["anchor_index"] == k and pasted["candidates"] == 3
    # Pasting candidate k back makes the video from candidate k, with no ranking.
    k = 2 if chosen != 2 else 1
    text = Image.open(io.BytesIO(base64.b64decode(response["images"][1 + k]))).info["parameters"]
    again = run(make_p(host, i4vgen=ui_args(host, **{n: v for n, v in pasted_values(host, text).items()
                                                     if v is not None and n not in ("enable", "anchor_image")}),
                       ad=ad_args(batch_size=8), seed=7, steps=4, cfg_scale=5.0, negative_prompt="blurry"))
    record = json.loads(again.extra_generation_params["I4VGen"])
    assert record["chosen_anchor"] == k and record["ranked_by"] == "manual"
