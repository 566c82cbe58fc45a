import pytest
import torch

from i4vgen_ext.core.noise import draw_noises, seeded_generator
from i4vgen_ext.core.pipeline import progress_plan, run_i4vgen
from i4vgen_ext.core.settings import I4VGenSettings

from .mock_denoiser import MockDenoiser

H = W = 4


class RecordingRanker:
    name = "recording"

    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def score(self, prompt, images):
        self.calls.append((prompt, list(images)))
        return list(self.scores)

    def unload(self):
        pass


def _decode(latents):
    return [f"image-{i}" for i in range(latents.shape[0])]


def _run(settings, ranker=None, **kw):
    noises = draw_noises(seeded_generator(settings.seed), frames=settings.frames, candidates=settings.candidates,
                         latent_height=H, latent_width=W)
    den = MockDenoiser(steps=settings.steps)
    return den, run_i4vgen(den, settings, noises, ranker=ranker, decode_images=_decode, **kw)


def test_official_preset_costs_66_unet_calls_and_ranks_once():
    s = I4VGenSettings.from_preset("official", prompt="a cat", seed=1)
    ranker = RecordingRanker([0.0] * 5 + [2.0] + [1.0] * 10)
    den, result = _run(s, ranker)
    assert result.unet_calls == {"anchor": 25, "nivsds": 16, "regeneration": 25, "total": 66}
    assert den.unet_calls == 66
    assert len(ranker.calls) == 1 and ranker.calls[0][0] == "a cat" and len(ranker.calls[0][1]) == 16
    assert result.anchor_index == 5 and result.scores[5] == 2.0 and result.ranker == "recording"
    # The NI-VSDS stage started from the winner's latent repeated, bit for bit.
    first_video_input = next(x for t, video, x in den.calls if video)
    assert first_video_input.shape == (1, 4, 16, H, W)
    assert result.timesteps["nivsds"][0] == 961 and result.timesteps["regeneration"][0] == 961
    assert sum(progress_plan(s).values()) == 25 + 1 + 16 + 25


def test_anchor_is_the_winning_candidate_bit_for_bit():
    s = I4VGenSettings.from_preset("official", frames=4, candidates=3, steps=5, regen_strength=0.0, nivsds_fraction=0.0)
    ranker = RecordingRanker([0.1, 0.9, 0.3])
    den, result = _run(s, ranker)
    ac = den.alphas_cumprod
    # With one NI-VSDS step, the first video input is add_noise(static, eps, t0): recover the static video.
    t0, _, x_t = next(c for c in den.calls if c[1])
    noises = draw_noises(seeded_generator(s.seed), frames=4, candidates=3, latent_height=H, latent_width=W)
    static = (x_t - (1 - ac[t0]) ** 0.5 * noises.nivsds) / ac[t0] ** 0.5
    for k in range(4):
        torch.testing.assert_close(static[0, :, k], result.candidates[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(result.video, result.nivsds)  # p_re = 0 keeps the NI-VSDS video


def test_manual_anchor_index_skips_the_ranker():
    s = I4VGenSettings.from_preset("official", candidates=4, frames=4, steps=4, anchor_index=2)
    ranker = RecordingRanker([9, 0, 0, 0])
    _, result = _run(s, ranker)
    assert ranker.calls == [] and result.anchor_index == 2 and result.ranker == "manual" and result.scores is None


def test_no_ranker_keeps_candidate_zero():
    s = I4VGenSettings.from_preset("official", candidates=1, frames=3, steps=4)
    _, result = _run(s, None, ranker_label="none")
    assert result.anchor_index == 0 and result.scores is None and result.ranker == "none"
    assert result.video.shape == (1, 4, 3, H, W)


def test_given_anchor_skips_stage_one():
    s = I4VGenSettings.from_preset("official", frames=4, steps=10)
    anchor = torch.randn(4, H, W)
    den, result = _run(s, RecordingRanker([1.0] * 16), anchor=anchor)
    assert result.unet_calls == {"anchor": 0, "nivsds": 7, "regeneration": 10, "total": 17}
    assert result.candidates is None and all(video for _, video, _ in den.calls)


def test_same_seed_reproduces_bit_for_bit_and_other_seed_differs():
    s = I4VGenSettings.from_preset("official", frames=4, candidates=4, steps=6, seed=11)
    _, a = _run(s, RecordingRanker([0, 1, 0, 0]))
    _, b = _run(s, RecordingRanker([0, 1, 0, 0]))
    _, c = _run(s.replace(seed=12), RecordingRanker([0, 1, 0, 0]))
    assert torch.equal(a.video, b.video) and not torch.equal(a.video, c.video)


def test_callback_sees_every_step_and_can_interrupt():
    s = I4VGenSettings.from_preset("official", frames=2, candidates=2, steps=5)
    events = []
    _run(s, RecordingRanker([0, 1]), callback=events.append)
    plan = progress_plan(s)
    for stage, total in plan.items():
        got = [e for e in events if e.stage == stage]
        assert [e.i for e in got] == list(range(1, total + 1)) and all(e.total == total for e in got)

    class Stop(Exception):
        pass

    def interrupt(event):
        if event.stage == "ni-vsds":
            raise Stop

    with pytest.raises(Stop):
        _run(s, RecordingRanker([0, 1]), callback=interrupt)


def test_ranker_returning_wrong_count_is_an_error():
    s = I4VGenSettings.from_preset("official", frames=2, candidates=3, steps=3)
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        _run(s, RecordingRanker([0, 1]))
