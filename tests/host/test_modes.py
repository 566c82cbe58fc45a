"""The WebUI's other ways in, through the stand-in host: a user anchor image (panel and API), the modes
"i4vgen+evs" and "evs" (EVS refinement), their call counts, noise, refusals, host restoration and infotext."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from i4vgen_ext.core import compose as refine  # where EVS runs (core.compose.run_mode)
from i4vgen_ext.core.anchor_image import fit_to_video, load_anchor_image
from i4vgen_ext.webui import batch as i4vgen_batch
from i4vgen_ext.webui import job as i4vgen_job
from i4vgen_ext.webui.anchor import describe_anchor, encode_anchor, image_to_tensor
from i4vgen_ext.webui.sampler_inputs import from_host_video, to_host_video

from .conftest import (
    STAGE_TEXT,
    ad_args,
    assert_restored,
    b64,
    gif_frames,
    gradient,
    make_p,
    pasted_values,
    run,
    run_stopped,
    stage_calls,
    trigger_in,
    ui_args,
)

STEPS = 5  # EVS defaults at S = 5: 2 T2I steps (+1 re-evaluation at the block), n_V = 1, inversion 1 step


def record_of(p):
    return json.loads(p.extra_generation_params["I4VGen"])


def infotext_record(text):
    from modules import infotext_utils

    return json.loads(infotext_utils.parse_generation_parameters(text)["I4VGen"])


def video_frames(res):
    """The frames of AnimateDiff's GIF: a file path in the UI, base64 under the API."""
    import base64
    import io
    import os

    video = res.images[0]
    return gif_frames(video if os.path.exists(video) else io.BytesIO(base64.b64decode(video)))


def empty_png() -> bytes:
    """A PNG file whose header says 0 x 0 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# Anchor image ----------------------------------------------------------------------------------------------------------
def test_anchor_image_from_panel_and_api_skips_candidates_and_ranker(host, stub, watch):
    image = gradient(80, 48)
    model = host.model
    for source in ("panel", "api_base64", "api_data_url"):
        model.unet_log.clear()
        model.encode_log.clear()
        if source == "panel":
            p = make_p(host, i4vgen=ui_args(host, anchor_image=image, return_candidates=True), ad=ad_args(batch_size=8))
        else:
            value = b64(image) if source == "api_base64" else "data:image/png;base64," + b64(image)
            p = make_p(host, i4vgen={"enable": True, "candidates": 2, "anchor_image": value, "return_candidates": True},
                       api=True, ad=ad_args(batch_size=8))
        res = run(p)
        assert stub.loads == 0 and stub.calls == 0  # the ranker is never loaded, let alone called
        assert stage_calls(model, "anchors") == []
        nivsds, regen = stage_calls(model, "ni-vsds"), stage_calls(model, "regeneration")
        assert len(nivsds) == 3 and len(regen) == 4 and len(model.unet_log) == 7  # K + n_re, nothing else
        assert all(mm > 0 for _, _, mm, _ in nivsds + regen)
        record = record_of(p)
        assert record["unet_calls"] == {"anchor": 0, "nivsds": 3, "regeneration": 4, "total": 7}
        assert record["chosen_anchor"] == -1 and record["ranked_by"] == "anchor image"
        assert record["anchor_image"] == describe_anchor(image) and record["anchor_image"].startswith("80x48 sha256:")
        assert record["anchor_sample"] is False and record["mode"] == "i4vgen"
        assert len(model.encode_log) == 1 and model.encode_log[0].shape == (1, 3, 64, 64)
        assert len(res.images) == 1  # no candidates to return
        assert_restored(watch, p)


def test_panel_and_api_images_make_the_same_video(host, stub):
    image = gradient(80, 48)
    panel = run(make_p(host, i4vgen=ui_args(host, anchor_image=image), ad=ad_args(batch_size=8)))
    api = run(make_p(host, i4vgen={"enable": True, "anchor_image": "data:image/png;base64," + b64(image)}, api=True,
                     ad=ad_args(batch_size=8)))
    other = run(make_p(host, i4vgen=ui_args(host, anchor_image=gradient(48, 80)), ad=ad_args(batch_size=8)))
    assert video_frames(panel) == video_frames(api) != video_frames(other)


def test_anchor_latent_is_the_scaled_posterior_mean_of_the_fitted_image(host, stub, monkeypatch):
    seen = {}
    original = i4vgen_batch.run_mode

    def spy(*args, **kwargs):
        seen["anchor"] = kwargs["anchor"]
        return original(*args, **kwargs)

    monkeypatch.setattr(i4vgen_batch, "run_mode", spy)
    image = gradient(80, 48)
    run(make_p(host, i4vgen=ui_args(host, anchor_image=image), ad=ad_args(batch_size=8), width=64, height=64))
    x = image_to_tensor(fit_to_video(image, 64, 64)) * 2 - 1  # resized to cover, centre-cropped, in [-1, 1]
    assert torch.equal(host.model.encode_log[0], x)
    expected = host.model.first_stage_model.encode(x).mean[0] * 0.18215
    assert seen["anchor"].shape == (4, 8, 8) and torch.allclose(seen["anchor"], expected)


def test_anchor_sample_is_seeded_and_independent_of_the_global_rng(host):
    p = make_p(host, ad=ad_args())
    image = gradient(64, 64)
    torch.manual_seed(1)
    first = encode_anchor(p, image, sample=True, seed=5)
    torch.manual_seed(2)
    again = encode_anchor(p, image, sample=True, seed=5)
    other = encode_anchor(p, image, sample=True, seed=6)
    mean = encode_anchor(p, image, sample=False, seed=5)
    posterior = host.model.first_stage_model.encode(image_to_tensor(image) * 2 - 1)
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, mean)
    assert torch.allclose(first, ((posterior.mean + posterior.std * noise) * 0.18215)[0])


def test_rgba_and_palette_images_are_converted(host, stub):
    transparent_red = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    run(make_p(host, i4vgen={"enable": True, "anchor_image": b64(transparent_red)}, api=True, ad=ad_args(batch_size=8)))
    assert torch.equal(host.model.encode_log[-1], torch.ones(1, 3, 64, 64))  # alpha composited on white
    palette = gradient(64, 64, mode="P")
    run(make_p(host, i4vgen=ui_args(host, anchor_image=palette), ad=ad_args(batch_size=8)))
    assert torch.equal(host.model.encode_log[-1], image_to_tensor(palette.convert("RGB")) * 2 - 1)


@pytest.mark.parametrize("case, expected", [
    ("garbage_base64", "base64"),
    ("not_an_image", "readable image"),
    ("empty_png", "readable image"),
    ("zero_size_panel", "non-zero width and height"),
    ("extreme_aspect", "aspect ratio"),
    ("anchor_with_mode_evs", "needs mode 'i4vgen' or 'i4vgen\\+evs'"),
    ("bad_mode", "'mode'"),
    ("evs_strength_zero", "'evs_strength'"),
    ("evs_video_steps_too_many", "'evs_video_steps'"),
    ("evs_t2v_step_past_the_t2i_steps", "'evs_t2v_step'"),
])
def test_bad_inputs_are_refused_before_sampling(host, stub, case, expected):
    api = {
        "garbage_base64": {"anchor_image": "this is not base64!"},
        "not_an_image": {"anchor_image": b64(b"hello, world")},
        "empty_png": {"anchor_image": b64(empty_png())},
        "anchor_with_mode_evs": {"anchor_image": b64(gradient(64, 64)), "mode": "evs"},
        "bad_mode": {"mode": "fast"},
        "evs_strength_zero": {"mode": "evs", "evs_strength": 0},
        "evs_video_steps_too_many": {"mode": "i4vgen+evs", "evs_video_steps": 3},  # int(5 * 0.3) = 1 at most
        "evs_t2v_step_past_the_t2i_steps": {"mode": "evs", "evs_t2v_step": 3},  # int(5 * 0.4) = 2 T2I steps
    }
    panel = {"zero_size_panel": Image.new("RGB", (0, 0)), "extreme_aspect": gradient(90, 10)}
    if case in api:
        p = make_p(host, i4vgen={"enable": True, **api[case]}, api=True, ad=ad_args(batch_size=8), steps=STEPS)
    else:
        p = make_p(host, i4vgen=ui_args(host, anchor_image=panel[case]), ad=ad_args(batch_size=8), steps=STEPS)
    with pytest.raises(i4vgen_job.I4VGenError, match=expected):
        run(p)
    assert host.model.unet_log == [] and host.model.encode_log == [] and stub.loads == 0
    assert "sample" not in vars(p)


# EVS ---------------------------------------------------------------------------------------------------------------------
def test_mode_evs_refines_animatediffs_own_video(host, stub, watch, monkeypatch):
    from modules import processing
    from modules.api import api

    host_latents = []
    decode = processing.decode_latent_batch
    monkeypatch.setattr(processing, "decode_latent_batch",
                        lambda model, batch, **kw: (host_latents.append(batch.clone()), decode(model, batch, **kw))[1])
    refined_from = []
    from i4vgen_ext.core import compose

    original = compose.evs_refine
    monkeypatch.setattr(compose, "evs_refine",
                        lambda d, video, *a, **kw: (refined_from.append(video.clone()), original(d, video, *a, **kw))[1])

    def body(i4vgen):
        return {"prompt": "a corgi", "seed": 7, "steps": STEPS, "cfg_scale": 5.0, "width": 64, "height": 64,
                "sampler_name": "Euler", "alwayson_scripts": {"AnimateDiff": {"args": [ad_args(batch_size=8)]},
                                                              "I4VGen": {"args": [i4vgen]}}}

    api.text2imgapi(body({"enable": False}), host.runners["txt2img"], host.defaults["txt2img"])
    plain_log = list(host.model.unet_log)
    host.model.unet_log.clear()
    response = api.text2imgapi(body({"enable": True, "mode": "evs"}), host.runners["txt2img"], host.defaults["txt2img"])

    # The video EVS refines is exactly the one AnimateDiff makes without I4VGen.
    assert torch.equal(to_host_video(refined_from[0]), host_latents[0])
    model = host.model
    plain, image, video = (stage_calls(model, s) for s in ("plain", "evs-image", "evs-video"))
    assert [entry[1:3] for entry in plain] == [entry[1:3] for entry in plain_log] and len(plain) == STEPS
    assert len(image) == 3 and all(batch == 16 and mm == 0 for _, batch, mm, _ in image)  # image mode: no motion
    assert len(video) == 1 and all(mm > 0 for _, _, mm, _ in video)
    assert len(model.unet_log) == STEPS + 4
    info = json.loads(response["info"])
    record = json.loads(info["extra_generation_params"]["I4VGen"])
    assert record["unet_calls"] == {"plain": 5, "evs_image": 3, "evs_video": 1, "evs_inversion": 0, "total": 9}
    assert record["mode"] == "evs" and "chosen_anchor" not in record and record["evs_strength"] == 0.4
    assert 'evs' in record["mode"] and 'I4VGen: ' in info["infotexts"][0] and stub.loads == 0
    assert_restored(watch, response["p"])


def test_i4vgen_plus_evs_with_inversion_context_windows_and_ddim(host, stub, watch, monkeypatch):
    """F = 6 frames with AnimateDiff's context 4: EVS's image calls go in chunks of 4 + 2 frames, the video calls
    through AnimateDiff's context windows; inversion runs without CFG, the rest with the job's CFG scale."""
    from modules import shared
    from modules.sd_samplers_cfg_denoiser import CFGDenoiser

    scales = []
    forward = CFGDenoiser.forward
    monkeypatch.setattr(CFGDenoiser, "forward", lambda self, x, sigma, uncond, cond, cond_scale, *a, **kw: (
        scales.append((shared.state.textinfo, cond_scale)), forward(self, x, sigma, uncond, cond, cond_scale, *a, **kw))[1])
    p = make_p(host, i4vgen=ui_args(host, mode="i4vgen+evs", evs_inversion=True),
               ad=ad_args(batch_size=4, video_length=6, overlap=1), steps=STEPS, sampler_name="DDIM")
    run(p)
    model = host.model
    image, video, inversion = (stage_calls(model, s) for s in ("evs-image", "evs-video", "evs-inversion"))
    assert sorted(batch for _, batch, _, _ in image) == [4] * 3 + [8] * 3 and all(mm == 0 for *_, mm, _ in image)
    assert video and inversion and all(mm > 0 for _, _, mm, _ in video + inversion)
    assert all(batch == 8 for _, batch, _, _ in video + inversion)  # one 4-frame window at a time
    record = record_of(p)
    assert {k: record["unet_calls"][k] for k in ("evs_image", "evs_video", "evs_inversion")} == \
        {"evs_image": 3, "evs_video": 1, "evs_inversion": 1}
    assert record["unet_calls"]["total"] == sum(v for k, v in record["unet_calls"].items() if k != "total")
    assert {scale for text, scale in scales if text.startswith(STAGE_TEXT["evs-inversion"])} == {1.0}
    assert {scale for text, scale in scales if text.startswith(("I4VGen: EVS image", "I4VGen: EVS video"))} == {5.0}
    assert shared.state.job_count == shared.state.job_no == 1 + 3 + 1  # anchor chunk, ranking, NI-VSDS, regen, EVS
    assert_restored(watch, p)


@pytest.mark.parametrize("mode, draws_before, sampler", [("evs", 1, "Euler a"), ("i4vgen+evs", 2, "Euler")])
def test_evs_noise_continues_the_host_generators(host, stub, monkeypatch, mode, draws_before, sampler):
    """Draws after those of the video stage, from the batch's own per-frame seeds, whatever an ancestral
    sampler drew in between; the same seed gives the same video, another seed another one."""
    from modules import rng

    seen = []
    original = refine.evs_refine
    monkeypatch.setattr(refine, "evs_refine",
                        lambda d, v, noises, *a, **kw: (seen.append(noises), original(d, v, noises, *a, **kw))[1])

    def job(seed, **extra):
        return run(make_p(host, i4vgen=ui_args(host, mode=mode, **extra), ad=ad_args(batch_size=8), steps=STEPS,
                          sampler_name=sampler, seed=seed))

    first, again, other = job(1234), job(1234), job(99)
    generators = rng.ImageRNG((4, 8, 8), [1234 + k for k in range(8)])
    draws = [from_host_video(generators.next()) for _ in range(draws_before + 3)]
    assert torch.equal(seen[0].sdedit, draws[draws_before])
    assert torch.equal(seen[0].to_video, draws[draws_before + 1])
    assert torch.equal(seen[0].to_image, draws[draws_before + 2])
    assert gif_frames(first.images[0]) == gif_frames(again.images[0]) != gif_frames(other.images[0])
    job(1234, evs_fresh_bridge_noise=False)
    assert seen[-1].to_video is seen[-1].sdedit and seen[-1].to_image is seen[-1].sdedit


@pytest.mark.parametrize("stage, mode", [("plain", "evs"), ("evs-image", "evs"), ("evs-video", "i4vgen+evs"),
                                         ("evs-inversion", "evs")])
@pytest.mark.parametrize("action", ["interrupt", "skip", "error"])
def test_host_restored_after_interrupt_skip_and_error_in_evs(host, stub, watch, monkeypatch, stage, mode, action):
    trigger_in(monkeypatch, host, stub, stage, action)
    p = make_p(host, i4vgen=ui_args(host, mode=mode, evs_inversion=stage == "evs-inversion"),
               ad=ad_args(batch_size=8), steps=STEPS)
    run_stopped(p, action)
    assert_restored(watch, p)
    log = [entry[0] for entry in host.model.unet_log]
    started = next((i for i, text in enumerate(log) if text.startswith(STAGE_TEXT[stage])), len(log))
    assert all(text.startswith(STAGE_TEXT[stage]) for text in log[started:]), f"a later stage ran after the {action}"
    assert len(log) - started <= 1


def test_new_settings_round_trip_through_the_infotext(host, stub):
    image = gradient(80, 48)
    chosen = dict(mode="i4vgen+evs", anchor_sample=True, evs_strength=0.6, evs_t2v_step=1, evs_video_strength=0.4,
                  evs_video_steps=2, evs_fresh_bridge_noise=False, evs_inversion=True)
    res = run(make_p(host, i4vgen=ui_args(host, anchor_image=image, **chosen), ad=ad_args(batch_size=8), steps=STEPS))
    gif_comment = Image.open(res.images[0]).info["comment"].decode()
    record = infotext_record(gif_comment)
    assert {k: record[k] for k in chosen} == chosen
    assert record["anchor_image"] == describe_anchor(load_anchor_image(image))
    # S = 5: T2I int(5*0.6) = 3 steps + 1 at the block, n_V = 2, inversion over int(5*0.4) = 2 steps
    assert record["unet_calls"] == {"anchor": 0, "nivsds": 4, "regeneration": 5, "evs_image": 4, "evs_video": 2,
                                    "evs_inversion": 2, "total": 17}
    pasted = pasted_values(host, gif_comment)
    assert {k: pasted[k] for k in chosen} == {**chosen, "evs_t2v_step": 1.0, "evs_video_steps": 2.0}
    assert pasted["anchor_image"] is None  # the picture itself is not in the infotext: the panel's stays
    again = run(make_p(host, i4vgen=ui_args(host, anchor_image=image, **{k: pasted[k] for k in chosen}),
                       ad=ad_args(batch_size=8), steps=STEPS))
    assert gif_frames(again.images[0]) == gif_frames(res.images[0])


@pytest.mark.parametrize("mode, anchor, jobs", [("evs", False, 2), ("i4vgen+evs", False, 1 + 3 + 1),
                                                ("i4vgen", True, 2), ("i4vgen+evs", True, 3)])
def test_progress_counts_add_up_in_every_mode(host, stub, mode, anchor, jobs):
    from modules import shared

    named = dict(mode=mode, anchor_image=gradient(64, 64) if anchor else None)
    run(make_p(host, i4vgen=ui_args(host, **named), ad=ad_args(batch_size=8), steps=STEPS, n_iter=2))
    assert shared.state.job_count == shared.state.job_no == 2 * jobs
    assert shared.state.textinfo is None  # the job text is handed back


# img2img: the init image is the anchor (paper 4.5) ---------------------------------------------------------------------
def test_img2img_init_image_is_the_anchor(host, stub, watch):
    image = gradient(80, 48)
    model = host.model
    p = make_p(host, tab="img2img", init_images=[image], i4vgen=ui_args(host), ad=ad_args(batch_size=8),
               denoising_strength=0.3)
    run(p)
    assert stub.loads == 0 and stage_calls(model, "anchors") == []
    nivsds, regen = stage_calls(model, "ni-vsds"), stage_calls(model, "regeneration")
    assert len(nivsds) == 3 and len(regen) == 4 and len(model.unet_log) == 7  # K + n_re, nothing else
    x = image_to_tensor(fit_to_video(image, 64, 64)) * 2 - 1
    assert len(model.encode_log) == 1 and torch.equal(model.encode_log[0], x)  # encoded at the video size
    record = record_of(p)
    assert record["unet_calls"] == {"anchor": 0, "nivsds": 3, "regeneration": 4, "total": 7}
    assert record["chosen_anchor"] == -1 and record["anchor_source"] == "img2img init image"
    assert record["anchor_image"] == describe_anchor(image)
    assert p.denoising_strength == 0.3  # the host's own value is handed back
    assert_restored(watch, p)
    # The same image as the txt2img panel's anchor makes the same video.
    model.unet_log.clear()
    same = run(make_p(host, i4vgen=ui_args(host, anchor_image=image), ad=ad_args(batch_size=8)))
    again = run(make_p(host, tab="img2img", init_images=[image], i4vgen=ui_args(host), ad=ad_args(batch_size=8)))
    assert video_frames(same) == video_frames(again)


def test_img2img_refuses_a_second_anchor(host, stub):
    p = make_p(host, tab="img2img", init_images=[gradient(64, 64)], i4vgen=ui_args(host, anchor_image=gradient(64, 64)),
               ad=ad_args(batch_size=8))
    with pytest.raises(i4vgen_job.I4VGenError, match="init image is the anchor"):
        run(p)
    assert host.model.unet_log == []


def test_batch_count_makes_one_i4vgen_video_per_iteration(host, stub):
    from modules import infotext_utils

    p = make_p(host, i4vgen=ui_args(host), ad=ad_args(batch_size=8), n_iter=2, seed=50)
    res = run(p)
    assert len(res.images) == 2  # AnimateDiff's two videos
    first, second = (gif_frames(path) for path in res.images)
    assert first != second
    texts = [res.infotexts[0], res.infotexts[8]]
    params = [infotext_utils.parse_generation_parameters(t) for t in texts]
    assert [int(x["Seed"]) for x in params] == [50, 58]  # each video its own seed
    records = [json.loads(x["I4VGen"]) for x in params]
    assert all(r["unet_calls"]["total"] == 4 + 3 + 4 for r in records)  # S (2 candidates, one chunk) + K + n_re
    assert len(host.model.unet_log) == 2 * (4 + 3 + 4)
