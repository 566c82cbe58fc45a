"""Property-based fuzzing of the settings parser and of run.json: any input becomes valid settings or raises the
named ``SettingsError``, never another exception; run.json is always strict JSON."""
from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from i4vgen_ext.core.settings import FIELD_BY_NAME, FIELDS, I4VGenSettings, SettingsError, coerce
from i4vgen_ext.standalone.outputs import write_run_json

NAMES = [f.name for f in FIELDS if f.name not in ("anchor_image", "preset")]  # preset: from_preset's own argument
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["official", "paper", "deep", "i4vgen", "plain+evs", "1e3", "nan", "-1", "0.5", "true", "10,1"]),
    st.lists(st.floats(allow_nan=True), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FUZZ = hsettings(max_examples=int(os.environ.get("I4VGEN_FUZZ_EXAMPLES", 300)), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8).filter(lambda k: k != "preset")), VALUES,
                       max_size=6),
       st.sampled_from(["official", "paper", "fast"]))
def test_any_overrides_give_valid_settings_or_the_named_error(overrides, preset):
    try:
        s = I4VGenSettings.from_preset(preset, **overrides)
    except SettingsError as error:
        assert error.name in set(overrides) | {"preset"} | {"anchor_index"}, error
        assert str(error).startswith(f"{error.name} = ")
        return
    for spec in FIELDS:
        if spec.kind in (int, float) and getattr(s, spec.name, None) is not None:
            assert math.isfinite(getattr(s, spec.name))
    json.loads(json.dumps(s.to_dict(), allow_nan=False))


@FUZZ
@given(st.sampled_from(NAMES), VALUES)
def test_coerce_converts_or_names_the_setting(name, value):
    try:
        out = coerce(name, value)
    except SettingsError as error:
        assert error.name == name
        return
    spec = FIELD_BY_NAME[name]
    if out is not None:
        assert isinstance(out, spec.kind if spec.kind is not float else (int, float))


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


RECORDS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text()),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), RECORDS, max_size=5))
def test_run_json_is_always_strict_json(tmp_path_factory, record):
    path = tmp_path_factory.mktemp("runjson") / "run.json"
    write_run_json(path, record)
    _strict(path.read_text())


def test_a_schedule_override_is_typed_and_in_range_or_named():
    from i4vgen_ext.core.schedule import ScheduleConfig

    good = I4VGenSettings.from_preset("official", schedule={"timestep_spacing": "trailing"})
    assert good.schedule == ScheduleConfig(timestep_spacing="trailing")
    for bad in (False, [], "ddim", {"unknown": 1}, {"num_train_timesteps": 1}, {"beta_start": float("nan")},
                {"beta_start": 0.02, "beta_end": 0.01}, {"steps_offset": True}, {"timestep_spacing": "linspace"}):
        with pytest.raises(SettingsError, match=r"^schedule = "):
            I4VGenSettings.from_preset("official", schedule=bad)
    with pytest.raises(SettingsError, match=r"^steps = 2 .*steps_offset"):
        I4VGenSettings.from_preset("official", steps=2, schedule={"steps_offset": 600})
