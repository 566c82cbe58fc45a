"""I4VGen in a live WebUI over /sdapi/v1/img2img: the init image is the anchor (paper §4.5), so no candidates are
made and the UNet calls are NI-VSDS and regeneration only."""
from __future__ import annotations

import pytest
from PIL import Image

from .client import encode_png
from .conftest import SIZE, STEPS, assert_video

K = int(STEPS * 0.6) + 1  # NI-VSDS iterations, official preset


def init_image() -> Image.Image:
    """A colour gradient: a picture the VAE can encode, different in every pixel row and column."""
    image = Image.new("RGB", (SIZE, SIZE))
    image.putdata([(4 * x, 4 * y, 255 - 2 * (x + y)) for y in range(SIZE) for x in range(SIZE)])
    return image


@pytest.fixture(scope="module")
def img2img_job(webui, payload, plain_reference):  # plain_reference: the session's first job is a plain one
    return webui.job("/sdapi/v1/img2img", payload.img2img(encode_png(init_image()), i4vgen=True))


def test_img2img_init_image_is_the_anchor(img2img_job):
    assert_video(img2img_job)
    assert len(img2img_job.images) == 1
    record = img2img_job.record
    assert record is not None, img2img_job
    assert record["anchor_source"] == "img2img init image", record
    assert record["chosen_anchor"] == -1, "an anchor image replaces the candidates"
    calls = record["unet_calls"]
    assert calls.get("anchor", 0) == 0, calls
    assert calls["nivsds"] == K and calls["regeneration"] > 0, calls
    assert calls["total"] == calls["nivsds"] + calls["regeneration"], calls
