"""I4VGen on an SDXL checkpoint (the stand-in's ``TinySDXL``: dict conditioning, sgm first stage) with AnimateDiff's
SDXL beta and HotShot-XL motion modules: candidates in image mode on AnimateDiff's XL schedule, NI-VSDS and
regeneration with the module in, the anchor image's posterior mean on SDXL's first stage, batch count 2, and the
refusals that remain."""
from __future__ import annotations

import json

import pytest
import torch

from i4vgen_ext.errors import I4VGenError

from .conftest import ad_args, assert_restored, b64, gradient, make_p, run, stage_calls, ui_args

XL_MODULES = ["mm_sdxl_v10_beta.ckpt", "hsxl_temporal_layers.f16.safetensors"]


@pytest.fixture
def sdxl(host):
    """``shared.sd_model`` is a tiny SDXL model for the test (A1111's checkpoint switch, reduced to the swap)."""
    from modules import shared
    from scripts.animatediff_mm import AnimateDiffMM, mm_animatediff
    from tinymodel import TinySDXL

    previous = shared.sd_model
    shared.sd_model = model = TinySDXL()
    try:
        yield model
    finally:
        if AnimateDiffMM.mm_injected:
            mm_animatediff.restore(model)
        shared.sd_model = previous


def xl_schedule(name: str) -> torch.Tensor:
    """AnimateDiff's ``_set_ddim_alpha`` for XL modules: scaled-linear to 0.020 (AD-XL), linear to 0.012 (HotShot)."""
    if name.startswith("mm_sdxl"):
        betas = torch.linspace(0.00085 ** 0.5, 0.020 ** 0.5, 1000) ** 2
    else:
        betas = torch.linspace(0.00085, 0.012, 1000)
    return torch.cumprod(1.0 - betas, dim=0)


@pytest.mark.parametrize("module", XL_MODULES)
def test_txt2img_with_an_xl_motion_module(host, stub, watch, sdxl, monkeypatch, module):
    seen_schedules = []
    apply_model = type(sdxl).apply_model

    def spy(self, x, t, cond):
        assert set(cond) >= {"crossattn", "vector"}, "SDXL's dict conditioning did not reach the UNet"
        seen_schedules.append(self.alphas_cumprod[-1].item())
        return apply_model(self, x, t, cond)

    monkeypatch.setattr(type(sdxl), "apply_model", spy)
    p = make_p(host, i4vgen=ui_args(host, candidates=2), ad=ad_args(batch_size=8, model=module))
    res = run(p)
    anchors, nivsds, regen = (stage_calls(sdxl, s) for s in ("anchors", "ni-vsds", "regeneration"))
    assert anchors and all(batch == 4 and mm == 0 for _, batch, mm, _ in anchors)  # 2 cond + 2 uncond, module out
    assert nivsds and all(batch == 16 and mm > 0 for _, batch, mm, _ in nivsds)
    assert regen and all(batch == 16 and mm > 0 for _, batch, mm, _ in regen)
    expected = xl_schedule(module)[-1].item()
    assert seen_schedules and all(v == pytest.approx(expected) for v in seen_schedules), "not AnimateDiff's XL schedule"
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["unet_calls"]["total"] == len(sdxl.unet_log)
    assert res.images[0].endswith(".gif")
    assert_restored(watch, p)


def test_anchor_image_is_the_posterior_mean_on_sdxls_first_stage(host, stub, sdxl):
    from i4vgen_ext.webui.anchor import encode_anchor, image_to_tensor

    p = make_p(host, i4vgen={"enable": True, "anchor_image": b64(gradient(64, 64))}, api=True,
               ad=ad_args(batch_size=8, model=XL_MODULES[0]))
    image = gradient(64, 64)
    torch.manual_seed(1)
    first = encode_anchor(p, image, sample=False, seed=7)
    torch.manual_seed(2)
    again = encode_anchor(p, image, sample=False, seed=7)
    moments = sdxl.first_stage_model.quant_conv(sdxl.first_stage_model.encoder(image_to_tensor(image) * 2 - 1))
    assert torch.equal(first, again) and first.shape == (4, 8, 8)
    assert torch.allclose(first, 0.13025 * moments[0, :4], atol=1e-6)
    sampled = encode_anchor(p, image, sample=True, seed=7)
    assert torch.equal(sampled, encode_anchor(p, image, sample=True, seed=7)) and not torch.equal(sampled, first)
    run(p)
    record = json.loads(p.extra_generation_params["I4VGen"])
    assert record["anchor_image"].startswith("64x64 sha256:")
    assert not stage_calls(sdxl, "anchors") and stage_calls(sdxl, "ni-vsds")


def test_batch_count_two(host, stub, sdxl):
    p = make_p(host, i4vgen=ui_args(host, candidates=2), ad=ad_args(batch_size=8, model=XL_MODULES[0]), n_iter=2)
    res = run(p)
    assert len([i for i in res.images if isinstance(i, str) and i.endswith(".gif")]) == 2
    assert len(stage_calls(sdxl, "anchors")) == 2 * 4


def test_an_sd15_module_on_sdxl_is_refused(host, stub, sdxl):
    p = make_p(host, i4vgen=ui_args(host, candidates=2), ad=ad_args(batch_size=8))
    with pytest.raises(I4VGenError, match="motion module is not injected"):
        run(p)
    assert sdxl.unet_log == []
