import pytest
import torch

from i4vgen_ext.evs import EVSSettings, draw_evs_noises, evs_refine, x0_from_eps
from i4vgen_ext.sampling import sample_ddim
from i4vgen_ext.schedule import ScheduleConfig, add_noise
from i4vgen_ext.settings import SettingsError

from .mock_denoiser import MockDenoiser

SHAPE = (1, 4, 6, 4, 4)


def _video(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def test_x0_bridge_inverts_add_noise():
    den = MockDenoiser()
    x0, noise = _video(1), _video(2)
    for t in (961, 481, 1):
        x_t = add_noise(x0, noise, t, den.alphas_cumprod)
        torch.testing.assert_close(x0_from_eps(x_t, noise, t, den.alphas_cumprod), x0, rtol=1e-4, atol=1e-4)


def test_video_block_round_trip_is_exact_when_the_model_predicts_its_noise():
    noises = draw_evs_noises(torch.Generator().manual_seed(0), SHAPE)
    known = noises.to_video

    def eps(x, t, video):
        return known.clone() if video else 0.05 * x

    den = MockDenoiser(eps)
    result = evs_refine(den, _video(), noises, EVSSettings(video_steps=3))
    torch.testing.assert_close(result.block_output, result.block_input, rtol=1e-4, atol=1e-4)


def test_calls_per_kind():
    den = MockDenoiser()
    settings = EVSSettings(strength=0.4, video_strength=0.3, video_steps=4)
    result = evs_refine(den, _video(), draw_evs_noises(torch.Generator().manual_seed(0), SHAPE), settings)
    assert result.unet_calls == {"image": 11, "video": 4, "inversion": 0, "total": 15}
    assert den.unet_calls == 15
    assert len(result.timesteps["image"]) == 10 and result.timesteps["image"][0] == 361
    assert result.timesteps["video"] == [241, 201, 161, 121]
    video_calls = [c for c in den.calls if c[1]]
    assert len(video_calls) == 4 and all(c[2].shape == SHAPE for c in video_calls)
    assert all(c[2].shape == (6, 4, 4, 4) for c in den.calls if not c[1])  # frames batched in image mode


def test_inversion_replaces_sdedit_noising():
    den = MockDenoiser()
    settings = EVSSettings(video_steps=2, inversion=True)
    result = evs_refine(den, _video(), draw_evs_noises(torch.Generator().manual_seed(0), SHAPE), settings)
    assert result.unet_calls["inversion"] == 7 and result.unet_calls["video"] == 2  # t_V = timesteps[18] = 241: 7 levels


def test_no_video_steps_is_sdedit_in_image_mode():
    den = MockDenoiser()
    noises = draw_evs_noises(torch.Generator().manual_seed(0), SHAPE)
    video = _video()
    result = evs_refine(den, video, noises, EVSSettings(video_steps=0))
    assert result.unet_calls == {"image": 10, "video": 0, "inversion": 0, "total": 10}
    ref = MockDenoiser()
    frames = video[0].permute(1, 0, 2, 3)
    expected = sample_ddim(lambda z, t: ref.predict_noise(z, t, video=False), frames,
                           noises.sdedit[0].permute(1, 0, 2, 3), steps=10, timesteps=ref.timesteps,
                           alphas_cumprod=ref.alphas_cumprod, config=ScheduleConfig(), stage="sdedit")
    torch.testing.assert_close(result.latents, expected.permute(1, 0, 2, 3)[None], rtol=1e-5, atol=1e-5)


def test_deterministic_with_a_seed_and_fresh_noise_matters():
    def run(seed, fresh=True):
        noises = draw_evs_noises(torch.Generator().manual_seed(seed), SHAPE, fresh_bridge_noise=fresh)
        return evs_refine(MockDenoiser(), _video(), noises, EVSSettings()).latents

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))
    assert not torch.equal(run(4), run(4, fresh=False))


@pytest.mark.parametrize(
    "kwargs,name",
    [({"strength": 0}, "evs_strength"), ({"video_strength": 1.5}, "evs_video_strength"),
     ({"video_steps": -2}, "evs_video_steps"), ({"t2v_step": -3}, "evs_t2v_step")],
)
def test_bad_settings(kwargs, name):
    with pytest.raises(SettingsError, match=name):
        EVSSettings(**kwargs)


def test_plan_checks_against_the_step_count():
    with pytest.raises(SettingsError, match=r"evs_video_steps = 9 .*\[0, 7\]"):
        EVSSettings(video_steps=9).plan(25)
    with pytest.raises(SettingsError, match=r"evs_t2v_step = 11 .*\[1, 10\]"):
        EVSSettings(t2v_step=11).plan(25)
    assert EVSSettings().plan(25) == {"image_steps": 10, "block_at": 5, "video_start_index": 18, "video_steps": 4}


def test_auto_video_steps_fit_the_schedule():
    assert EVSSettings().plan(10)["video_steps"] == 3
    assert EVSSettings().plan(50)["video_steps"] == 4
