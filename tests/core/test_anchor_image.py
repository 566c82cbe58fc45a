import io

import numpy as np
import pytest
from PIL import Image

from i4vgen_ext.core.anchor_image import fit_to_video, load_anchor_image
from i4vgen_ext.core.settings import SettingsError


def _png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (40, 30), (255, 0, 0, 128)),
        Image.new("P", (40, 30), 3),
        Image.new("L", (40, 30), 90),
        Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)),
        Image.new("LA", (40, 30), (10, 200)),
    ],
    ids=["rgba", "palette", "gray", "cmyk", "16bit", "la"],
)
def test_modes_become_rgb8(image):
    rgb = load_anchor_image(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    assert np.asarray(rgb).dtype == np.uint8


def test_alpha_is_composited_on_white_and_16bit_rescaled():
    half_red = load_anchor_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert np.asarray(half_red)[0, 0].tolist() == [255, 255, 255]
    white16 = load_anchor_image(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))
    assert np.asarray(white16)[0, 0].tolist() == [255, 255, 255]


def test_bytes_and_paths(tmp_path):
    data = _png_bytes(Image.new("RGB", (16, 16), (1, 2, 3)))
    assert load_anchor_image(data).getpixel((0, 0)) == (1, 2, 3)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert load_anchor_image(path).size == (16, 16)


def test_bad_inputs_are_refused_clearly(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(SettingsError, match="anchor_image .* readable image"):
        load_anchor_image(junk)
    with pytest.raises(SettingsError, match="readable image"):
        load_anchor_image(tmp_path / "missing.png")
    with pytest.raises(SettingsError, match="non-zero"):
        load_anchor_image(Image.new("RGB", (0, 10)))
    with pytest.raises(SettingsError, match="aspect ratio"):
        load_anchor_image(Image.new("RGB", (900, 100)))


def test_fit_centre_crops_without_distortion():
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 50, 100))  # a red left quarter is cropped away
    fitted = fit_to_video(image, 64, 64)
    assert fitted.size == (64, 64)
    assert fitted.getpixel((0, 32))[2] > 200
