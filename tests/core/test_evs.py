from contextlib import contextmanager

import pytest
import torch

from i4vgen_ext.core.evs import EVSSettings, draw_evs_noises, evs_refine, parse_sfi_layers, x0_from_eps
from i4vgen_ext.core.sampling import sample_ddim
from i4vgen_ext.core.schedule import ScheduleConfig, add_noise
from i4vgen_ext.core.settings import SettingsError

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


# ---- Selective Feature Injection (SFI) ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,name",
    [({"sfi": True}, "evs_sfi"), ({"sfi": 1, "inversion": True}, "evs_sfi"),
     ({"sfi_gamma": -0.1}, "evs_sfi_gamma"), ({"sfi_gamma": 1.5}, "evs_sfi_gamma"),
     ({"sfi_gamma": True}, "evs_sfi_gamma"), ({"sfi_layers": ""}, "evs_sfi_layers"),
     ({"sfi_layers": "deep layers"}, "evs_sfi_layers"), ({"sfi_layers": "mid_block,"}, "evs_sfi_layers"),
     ({"sfi_layers": 3}, "evs_sfi_layers")],
)
def test_bad_sfi_settings(kwargs, name):
    with pytest.raises(SettingsError, match=name):
        EVSSettings(**kwargs)


def test_sfi_is_off_by_default_and_needs_inversion():
    assert EVSSettings().sfi is False and EVSSettings().sfi_gamma == 0.8 and EVSSettings().sfi_layers == "deep"
    with pytest.raises(SettingsError, match="evs_inversion"):
        EVSSettings(sfi=True, inversion=False)
    settings = EVSSettings(inversion=True, sfi=True, sfi_gamma=0, sfi_layers=" mid_block , up_blocks.1")
    assert settings.to_dict()["sfi_layers"] == " mid_block , up_blocks.1"


def test_layer_selections_parse():
    assert parse_sfi_layers("deep") == "deep" and parse_sfi_layers(" all ") == "all"
    assert parse_sfi_layers("mid_block, up_blocks.1") == ("mid_block", "up_blocks.1")
    for bad in ("", ",", "up blocks", "up_blocks..1", "1up"):
        with pytest.raises(ValueError):
            parse_sfi_layers(bad)


class FakeStore:
    """What a backbone's store does, in miniature: records filed under the call's timestep or ``filed_under``."""

    def __init__(self, layers, keep):
        self.layers, self.keep, self.records, self.level = layers, keep, {}, None

    @contextmanager
    def filed_under(self, level):
        previous, self.level = self.level, level
        try:
            yield
        finally:
            self.level = previous


class AttentionMockDenoiser(MockDenoiser):
    """A MockDenoiser with the optional capability. The "features" of a call are its input x; injection mixes them
    into the input the way Eq. 11 mixes queries: eps_fn(gamma * x_inv + (1 - gamma) * x)."""

    def __init__(self, eps_fn=None):
        super().__init__(eps_fn)
        self.mode = None  # None, ("record", store) or ("inject", store, gamma, layers)
        self.log = []  # (t, video, mode name, key the call recorded under or read from)
        self.stores = []

    @contextmanager
    def record_attention(self, layers="all", *, timesteps=None):
        store = FakeStore(layers, None if timesteps is None else set(timesteps))
        self.stores.append(store)
        self.mode = ("record", store)
        try:
            yield store
        finally:
            self.mode = None

    @contextmanager
    def inject_attention(self, store, gamma, layers="all"):
        self.mode = ("inject", store, gamma, layers)
        try:
            yield
        finally:
            self.mode = None

    def predict_noise(self, x, t, *, video):
        mode = self.mode if video else None  # image mode is left alone
        if mode is None:
            self.log.append((t, video, None, None))
            return super().predict_noise(x, t, video=video)
        store = mode[1]
        if mode[0] == "record":
            key = t if store.level is None else store.level
            if store.keep is None or key in store.keep:
                store.records[key] = x.clone()
            self.log.append((t, video, "record", key))
            return super().predict_noise(x, t, video=video)
        gamma = mode[2]
        self.log.append((t, video, "inject", t))
        eps = super().predict_noise(x, t, video=video)
        return self.eps_fn(gamma * store.records[t] + (1 - gamma) * x, t, video) + 0 * eps


def _sfi_run(den, inverter=None, **kwargs):
    settings = EVSSettings(video_steps=2, inversion=True, **kwargs)
    noises = draw_evs_noises(torch.Generator().manual_seed(0), SHAPE)
    return evs_refine(den, _video(), noises, settings, inversion_denoiser=inverter)


def test_sfi_records_during_inversion_and_injects_during_the_video_steps_only():
    den = AttentionMockDenoiser()
    result = _sfi_run(den, sfi=True, sfi_gamma=0.5)
    # t_V = 241: the inversion evaluates at 1, 1, 41, ..., 201 and files each step under the level it reaches.
    recorded = [(t, key) for t, video, mode, key in den.log if mode == "record"]
    assert recorded == [(1, 1), (1, 41), (41, 81), (81, 121), (121, 161), (161, 201), (201, 241)]
    injected = [t for t, video, mode, key in den.log if mode == "inject"]
    assert injected == result.timesteps["video"] == [241, 201]
    assert all(video for t, video, mode, key in den.log if mode is not None)
    assert all(mode is None for t, video, mode, key in den.log if not video)  # image steps: never
    assert [m for *_, m, _ in den.log] == [None] * 5 + ["record"] * 7 + ["inject"] * 2 + [None] * 6
    assert den.mode is None
    # Only the n_V levels the video steps visit are kept; t_V's record is the input of the last inversion step.
    (store,) = den.stores
    assert sorted(store.records) == [201, 241] and store.keep == {241, 201}
    inversion_inputs = [x for t, video, x in den.calls if video][:7]
    assert torch.equal(store.records[241], inversion_inputs[-1])
    assert result.unet_calls == {"image": 11, "video": 2, "inversion": 7, "total": 20}


def test_sfi_changes_the_block_and_gamma_matters_but_not_the_call_counts():
    plain = _sfi_run(AttentionMockDenoiser())
    half = _sfi_run(AttentionMockDenoiser(), sfi=True, sfi_gamma=0.5)
    most = _sfi_run(AttentionMockDenoiser(), sfi=True, sfi_gamma=0.8)
    assert plain.unet_calls == half.unet_calls == most.unet_calls
    assert not torch.equal(plain.block_output, half.block_output)
    assert not torch.equal(half.block_output, most.block_output)
    # gamma = 0 with these mock features is no injection at all.
    none = _sfi_run(AttentionMockDenoiser(), sfi=True, sfi_gamma=0.0)
    torch.testing.assert_close(none.latents, plain.latents, rtol=0, atol=0)


def test_sfi_records_with_the_inverter_and_injects_with_the_denoiser():
    den, inverter = AttentionMockDenoiser(), AttentionMockDenoiser()
    result = _sfi_run(den, inverter, sfi=True)
    assert {m for *_, m, _ in inverter.log} == {"record"} and len(inverter.log) == 7
    assert [m for *_, m, _ in den.log if m] == ["inject", "inject"]
    assert result.unet_calls["inversion"] == 7 and inverter.unet_calls == 7


def test_sfi_on_a_denoiser_without_the_capability_fails_before_any_call():
    den = MockDenoiser()
    with pytest.raises(SettingsError, match="evs_sfi .*cannot record and inject"):
        _sfi_run(den, sfi=True)
    assert den.unet_calls == 0
    with pytest.raises(SettingsError, match="inversion denoiser"):
        _sfi_run(AttentionMockDenoiser(), MockDenoiser(), sfi=True)


def test_a_layer_list_the_model_rejects_names_evs_sfi_layers():
    class Picky(AttentionMockDenoiser):
        def record_attention(self, layers="all", *, timesteps=None):
            raise ValueError(f"no spatial self-attention layer starts with {layers!r}")

    with pytest.raises(SettingsError, match="evs_sfi_layers = 'nope'.*no spatial self-attention"):
        _sfi_run(Picky(), sfi=True, sfi_layers="nope")
