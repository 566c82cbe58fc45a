import pytest

from i4vgen_ext.core.settings import I4VGenSettings, SettingsError, alpha_list, parse_method_args


def test_official_preset_values():
    s = I4VGenSettings.from_preset("official", prompt="a cat")
    assert (s.frames, s.candidates, s.steps, s.guidance, s.negative_prompt) == (16, 16, 25, 7.5, "")
    assert (s.nivsds_fraction, s.alpha_schedule, s.regen_strength) == (0.6, "official", 1.0)
    sc = s.schedule
    assert (sc.beta_start, sc.beta_end, sc.beta_schedule) == (0.00085, 0.012, "linear")
    assert (sc.steps_offset, sc.clip_sample, sc.set_alpha_to_one, sc.timestep_spacing) == (1, False, True, "leading")
    assert s.nivsds_iterations == 16 and s.regen_steps == 25
    assert s.alphas() == [10.0, 10.0, 10.0] + [1.0] * 13


def test_paper_preset_uses_alpha_one():
    s = I4VGenSettings.from_preset("paper")
    assert s.alphas() == [1.0] * 16
    assert s.nivsds_iterations == 16


@pytest.mark.parametrize(
    "steps,p,k", [(25, 0.6, 16), (50, 0.6, 31), (25, 0.0, 1), (25, 1.0, 25), (100, 0.29, 29), (10, 0.95, 10)]
)
def test_nivsds_iteration_count(steps, p, k):
    assert I4VGenSettings.from_preset("official", steps=steps, nivsds_fraction=p).nivsds_iterations == k


@pytest.mark.parametrize("p,n", [(0.0, 0), (1.0, 25), (0.5, 12), (0.8, 20)])
def test_regen_steps(p, n):
    assert I4VGenSettings.from_preset("official", regen_strength=p).regen_steps == n


def test_alpha_lists_extend_with_one():
    assert alpha_list("official", 2) == [10.0, 10.0]
    assert alpha_list("official", 31)[3:] == [1.0] * 28
    assert alpha_list("5,2", 4) == [5.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("nivsds_fraction", 1.5, "[0, 1]"),
        ("regen_strength", -0.1, "[0, 1]"),
        ("candidates", 0, "[1, 64]"),
        ("frames", 0, "[1, 128]"),
        ("steps", 0, "[1, 999]"),  # 1000 with "leading" spacing + offset 1 would index past the schedule
        ("width", 100, "multiple of 8"),
        ("height", 32, "[64, 2048]"),
        ("guidance", -1, "[0, 50]"),
        ("ranker", "hpsv9", "imagereward"),
        ("ranker_fallback", "maybe", "error, none"),
        ("alpha_schedule", "10,-1", "positive"),
        ("alpha_schedule", "abc", "positive"),
        ("anchor_index", -2, "[-1, 63]"),
        ("seed", "abc", "integer"),
        ("candidates", 2.5, "integer"),
    ],
)
def test_bad_values_name_the_setting_value_and_range(name, value, needle):
    with pytest.raises(SettingsError) as err:
        I4VGenSettings.from_preset("official", **{name: value})
    message = str(err.value)
    assert message.startswith(f"{name} = {value!r}")
    assert needle in message


def test_anchor_index_must_be_below_candidates():
    with pytest.raises(SettingsError, match=r"anchor_index = 4 .*\[0, 3\]"):
        I4VGenSettings.from_preset("official", candidates=4, anchor_index=4)


def test_unknown_preset_and_setting():
    with pytest.raises(SettingsError, match="preset = 'fast'"):
        I4VGenSettings.from_preset("fast")
    with pytest.raises(SettingsError, match="colour = 'red'"):
        I4VGenSettings.from_preset("official", colour="red")


def test_parse_method_args_checks_keys_and_values():
    assert parse_method_args({"enable": True, "candidates": "8", "alpha_schedule": [10, 1]}, extra=("enable",)) == {
        "enable": True, "candidates": 8, "alpha_schedule": "10,1"}
    with pytest.raises(SettingsError, match="bogus"):
        parse_method_args({"bogus": 1})
    with pytest.raises(SettingsError, match=r"regen_strength = 2\.0"):
        parse_method_args({"regen_strength": 2})


def test_to_dict_round_trips():
    s = I4VGenSettings.from_preset("paper", prompt="x", seed=3, candidates=4, width=64, height=96)
    d = s.to_dict()
    again = I4VGenSettings(**{k: v for k, v in d.items() if k != "schedule"}, schedule=s.schedule)
    assert again == s
