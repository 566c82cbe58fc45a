"""Property-based fuzzing of the WebUI's argument parser (panel positional values and the API dict): any input
becomes a request or raises the named ``SettingsError``, never another exception."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from i4vgen_ext.core.settings import SettingsError
from i4vgen_ext.webui.args import UI_ORDER, build_settings, parse_script_args

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**40, max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=24),
    st.sampled_from(["official", "evs", "i4vgen+evs", "plain", "deep", "true", "/etc/passwd", "../x", "clip", "2"]),
    st.lists(st.integers(), max_size=3),
)
FUZZ = hsettings(max_examples=int(os.environ.get("I4VGEN_FUZZ_EXAMPLES", 300)), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _parse(args):
    try:
        request = parse_script_args(args)
    except SettingsError as error:
        assert str(error).startswith(f"{error.name} = ")
        return None
    try:
        build_settings(request, prompt="a cat", negative_prompt="", seed=1, frames=8, steps=4, guidance=7.0)
    except SettingsError as error:
        assert str(error).startswith(f"{error.name} = ")
    return request


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(UI_ORDER), st.text(max_size=8)), VALUES, max_size=6))
def test_api_dicts_parse_or_name_the_key(values):
    _parse([values])


@FUZZ
@given(st.lists(VALUES, max_size=len(UI_ORDER) + 2))
def test_positional_values_parse_or_name_the_setting(values):
    _parse(values)


NASTY = [None, True, False, 0, -1, 2**40, 1.5, float("nan"), float("inf"), "", "x", "/etc/passwd", [], [1, 2],
         {}, {"a": 1}, ("t",), b"bytes"]


def test_every_key_with_every_kind_of_value_parses_or_names_the_setting():
    """The deterministic floor under the fuzzing above: each panel key given each kind of JSON-ish value."""
    for name in UI_ORDER:
        for value in NASTY:
            _parse([{name: value}])
    for index in range(len(UI_ORDER)):
        for value in NASTY:
            _parse([True] * index + [value])
