"""The mappings between ComfyUI and the core: sigma <-> t, the schedule, the latent layout and scale, and the node's
widgets made from the one settings table."""
from __future__ import annotations

import pytest
import torch

from i4vgen_ext.comfy.denoiser import alphas_cumprod_of
from i4vgen_ext.comfy.inputs import NODE_MODES, WIDGETS, build_settings, setting_widgets
from i4vgen_ext.comfy.latents import core_video_from_latent, from_frames, latent_from_core_video, to_frames
from i4vgen_ext.core.schedule import ScheduleConfig, alphas_cumprod_for, sampling_timesteps
from i4vgen_ext.core.settings import FIELD_BY_NAME, SettingsError


def test_the_video_models_schedule_is_the_cores_and_every_sampling_timestep_maps_back_exactly(models):
    video = models["video"]
    sampling = video.get_model_object("model_sampling")
    ours = alphas_cumprod_of(video)
    assert torch.allclose(ours, alphas_cumprod_for(ScheduleConfig()), atol=3e-7, rtol=0)
    # the plain MODEL keeps SD's scaled-linear schedule: ADE's object patch is what image mode must borrow
    assert not torch.allclose(alphas_cumprod_of(models["plain"]), ours, atol=1e-4)
    for steps in (1, 4, 25, 50):
        for t in sampling_timesteps(steps, ScheduleConfig()):
            assert int(sampling.timestep(sampling.sigmas[t:t + 1])) == t


def test_the_image_model_is_a_clone_on_the_video_models_schedule(models):
    from i4vgen_ext.comfy.denoiser import image_model_for

    image = image_model_for(models["plain"], models["video"])
    assert image is not models["plain"] and image.model is models["plain"].model
    assert image.get_model_object("model_sampling") is models["video"].get_model_object("model_sampling")
    assert "model_sampling" not in models["plain"].object_patches


def test_latent_layout_and_scale():
    samples = torch.randn(5, 4, 3, 2)
    from comfy.latent_formats import SD15

    video = core_video_from_latent(samples, SD15())
    assert video.shape == (1, 4, 5, 3, 2)
    assert torch.allclose(video[0, :, 2], samples[2] * 0.18215)
    assert torch.allclose(latent_from_core_video(video, SD15()), samples, atol=1e-6)
    assert torch.equal(from_frames(to_frames(video)), video)


def test_widgets_take_names_defaults_ranges_and_help_from_the_table():
    declared = setting_widgets()
    assert list(declared) == list(WIDGETS)
    for name, (kind, options) in declared.items():
        spec = FIELD_BY_NAME[WIDGETS[name]]
        assert options["tooltip"] == spec.help
        if name == "mode":
            assert list(kind) == list(NODE_MODES) and set(NODE_MODES) <= set(spec.choices)
            continue
        assert options["default"] == spec.default, name
        if spec.choices:
            assert kind == list(spec.choices)
        elif kind in ("INT", "FLOAT") and name != "seed":
            assert options["min"] == spec.minimum, name
            if spec.maximum is not None:
                assert options["max"] == spec.maximum, name


@pytest.mark.parametrize("changes, named", [
    (dict(candidates=0), "candidates"), (dict(nivsds_fraction=1.5), "nivsds_fraction"),
    (dict(alpha_schedule="1,-2"), "alpha_schedule"), (dict(anchor_index=5, candidates=2), "anchor_index"),
    (dict(cfg=60.0), "cfg"), (dict(evs_strength=0.0), "evs_strength"), (dict(mode="plain"), "mode"),
    (dict(preset="fast"), "preset"), (dict(steps=0), "steps"),
])
def test_bad_values_get_the_tables_message_naming_the_widget(changes, named):
    from .conftest import widgets

    with pytest.raises(SettingsError) as error:
        build_settings(widgets(**changes), frames=8)
    assert error.value.name == named


def test_validate_inputs_returns_the_message_comfyui_shows():
    from i4vgen_ext.comfy.nodes import I4VGenSamplerAnimateDiff

    from .conftest import widgets

    assert I4VGenSamplerAnimateDiff.VALIDATE_INPUTS(**widgets()) is True
    message = I4VGenSamplerAnimateDiff.VALIDATE_INPUTS(**widgets(anchor_index=9, candidates=4))
    assert message.startswith("anchor_index = 9 is not allowed")


def test_the_preset_gives_the_method_values_the_widgets_do_not_override():
    from .conftest import widgets

    settings = build_settings(widgets(preset="paper", alpha_schedule="paper"), frames=8)
    assert settings.alphas() == [1.0] * settings.nivsds_iterations
