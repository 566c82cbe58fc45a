import pytest
import torch

from i4vgen_ext.core.noise import draw_noises, seeded_generator
from i4vgen_ext.core.schedule import ScheduleConfig, add_noise, alphas_cumprod_for, sampling_timesteps
from i4vgen_ext.core.stages import generate_candidates, ni_vsds, regenerate, select_anchor, static_video

from .mock_denoiser import MockDenoiser

H = W = 4


def test_official_timesteps():
    ts = sampling_timesteps(25, ScheduleConfig())
    assert ts[0] == 961 and ts[-1] == 1 and len(ts) == 25
    assert all(a - b == 40 for a, b in zip(ts, ts[1:]))


def test_rng_order_and_candidate_k_is_frame_k_of_plain_noise():
    noises = draw_noises(seeded_generator(7), frames=16, candidates=16, latent_height=H, latent_width=W)
    g = torch.Generator().manual_seed(7)
    plain = torch.randn((1, 4, 16, H, W), generator=g)  # what a plain AnimateDiff run with seed 7 starts from
    eps = torch.randn((1, 4, 16, H, W), generator=g)
    eps_re = torch.randn((1, 4, 16, H, W), generator=g)
    for k in range(16):
        assert torch.equal(noises.candidates[k], plain[0, :, k])
    assert torch.equal(noises.nivsds, eps) and torch.equal(noises.regeneration, eps_re)
    assert not torch.equal(noises.nivsds, noises.regeneration)


def test_rng_when_candidates_differ_from_frames():
    noises = draw_noises(seeded_generator(3), frames=8, candidates=5, latent_height=H, latent_width=W)
    g = torch.Generator().manual_seed(3)
    cand = torch.randn((1, 4, 5, H, W), generator=g)
    assert noises.candidates.shape == (5, 4, H, W)
    assert torch.equal(noises.candidates, cand[0].permute(1, 0, 2, 3))
    assert torch.equal(noises.nivsds, torch.randn((1, 4, 8, H, W), generator=g))
    assert noises.regeneration.shape == (1, 4, 8, H, W)


def test_candidates_are_image_mode_full_denoise():
    den = MockDenoiser()
    noise = torch.randn(3, 4, H, W)
    out = generate_candidates(den, noise)
    assert out.unet_calls == 25 and out.latents.shape == (3, 4, H, W)
    assert all(video is False for _, video, _ in den.calls)
    assert [t for t, _, _ in den.calls] == sampling_timesteps(25, ScheduleConfig())
    assert torch.equal(den.calls[0][2], noise)  # DDIM starts from the noise itself


@pytest.mark.parametrize("scores,expected", [([0.1, 0.5, 0.5, 0.2], 1), ([3.0], 0), ([-1, -1, -1], 0), ([0, 1e-9], 1)])
def test_select_anchor_argmax_ties_to_lowest(scores, expected):
    assert select_anchor(scores) == expected


def test_static_video_repeats_the_latent_bit_for_bit():
    cands = torch.randn(4, 4, H, W)
    video = static_video(cands[2], 16)
    assert video.shape == (1, 4, 16, H, W)
    for k in range(16):
        assert torch.equal(video[0, :, k], cands[2])


def _video_and_noise(frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 4, frames, H, W), generator=g), torch.randn((1, 4, frames, H, W), generator=g)


def test_nivsds_is_a_fixed_point_when_the_model_predicts_the_noise():
    video, noise = _video_and_noise()
    den = MockDenoiser(lambda x, t, v: noise.clone())
    out = ni_vsds(den, video, noise, iterations=16, alphas=[10.0] * 3 + [1.0] * 13)
    assert torch.equal(out.latents, video)
    assert out.unet_calls == 16 and out.timesteps == sampling_timesteps(25, ScheduleConfig())[:16]
    assert out.timesteps[0] == 961 and out.timesteps[-1] == 361


def test_nivsds_zero_prediction_moves_by_alpha_w_noise():
    video, noise = _video_and_noise()
    den = MockDenoiser(lambda x, t, v: torch.zeros_like(x))
    alphas = [10.0, 2.0]
    out = ni_vsds(den, video, noise, iterations=2, alphas=alphas)
    ac = alphas_cumprod_for(ScheduleConfig())
    expected = video
    for a, t in zip(alphas, (961, 921)):
        expected = expected + a * (1 - ac[t]) * noise
    torch.testing.assert_close(out.latents, expected, rtol=1e-6, atol=1e-6)


def test_nivsds_uses_one_noise_and_matches_the_x0_form():
    video, noise = _video_and_noise()
    ac = alphas_cumprod_for(ScheduleConfig())
    den = MockDenoiser(lambda x, t, v: torch.tanh(x) * 0.5 + 0.01 * t / 1000)
    alphas = [10.0] * 3 + [1.0] * 13
    out = ni_vsds(den, video, noise, iterations=16, alphas=alphas)
    # Replay: every UNet input is add_noise(x_i, SAME noise, t_i), and each step moves x toward x0_hat.
    x, x_code = video, video
    for i, (t, is_video, x_t) in enumerate(den.calls):
        assert is_video
        a = ac[t]
        torch.testing.assert_close(x_t, add_noise(x_code, noise, t, ac), rtol=0, atol=0)
        eps = den.eps_fn(x_t, t, True)
        x_code = x_code - alphas[i] * ((1 - a) * (eps - noise))
        x_t_form = add_noise(x, noise, t, ac)
        x0_hat = (x_t_form - (1 - a) ** 0.5 * den.eps_fn(x_t_form, t, True)) / a**0.5
        x = x + alphas[i] * (a * (1 - a)) ** 0.5 * (x0_hat - x)
    torch.testing.assert_close(out.latents, x_code, rtol=0, atol=0)
    torch.testing.assert_close(out.latents, x, rtol=1e-4, atol=1e-4)
    assert not out.latents.requires_grad


def test_nivsds_never_builds_a_graph_even_for_grad_inputs():
    video, noise = _video_and_noise()
    video.requires_grad_(True)
    out = ni_vsds(MockDenoiser(), video, noise, iterations=3, alphas=[1.0] * 3)
    assert not out.latents.requires_grad and out.latents.grad_fn is None


def test_nivsds_has_no_clipping():
    video, noise = _video_and_noise()
    den = MockDenoiser(lambda x, t, v: torch.full_like(x, -1e4))
    out = ni_vsds(den, video, noise, iterations=1, alphas=[1.0])
    ac = alphas_cumprod_for(ScheduleConfig())
    torch.testing.assert_close(out.latents, video - (1 - ac[961]) * (-1e4 - noise))


def test_regeneration_p1_starts_at_961_with_fresh_noise():
    video, fresh = _video_and_noise(seed=1)
    den = MockDenoiser()
    out = regenerate(den, video, fresh, steps=25)
    ac = alphas_cumprod_for(ScheduleConfig())
    assert out.unet_calls == 25 and out.timesteps[0] == 961
    first_t, _, first_x = den.calls[0]
    assert first_t == 961
    torch.testing.assert_close(first_x, ac[961] ** 0.5 * video + (1 - ac[961]) ** 0.5 * fresh, rtol=0, atol=0)
    assert abs(float(ac[961] ** 0.5) - 0.0498) < 5e-4 and abs(float((1 - ac[961]) ** 0.5) - 0.9988) < 5e-4


def test_regeneration_partial_strength_and_zero():
    video, fresh = _video_and_noise(seed=2)
    den = MockDenoiser()
    out = regenerate(den, video, fresh, steps=12)
    assert out.unet_calls == 12 and out.timesteps == sampling_timesteps(25, ScheduleConfig())[13:]
    zero = regenerate(den, video, fresh, steps=0)
    assert zero.latents is video and zero.unet_calls == 0 and zero.timesteps == []


def test_shape_errors_are_clear():
    video, noise = _video_and_noise()
    with pytest.raises(ValueError, match="must match the video"):
        ni_vsds(MockDenoiser(), video, noise[:, :, :3], iterations=1, alphas=[1.0])
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\)"):
        generate_candidates(MockDenoiser(), video)


def test_plain_video_is_a_full_video_denoise_from_the_noise():
    from i4vgen_ext.core.stages import plain_video

    den = MockDenoiser(steps=5)
    noise, _ = _video_and_noise(frames=3)
    out = plain_video(den, noise)
    assert out.unet_calls == 5 and all(video for _, video, _ in den.calls)
    assert torch.equal(den.calls[0][2], noise) and out.latents.shape == noise.shape
