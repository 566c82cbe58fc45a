from __future__ import annotations

import pytest

from i4vgen_ext.rankers import clean_prompt


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("a corgi running on the beach", "a corgi running on the beach"),
        ("a (corgi:1.2) running on ((the beach))", "a corgi running on the beach"),
        ("[red] dog, (((masterpiece))), (best quality:1.4)", "red dog, masterpiece, best quality"),
        ("a cat <lora:detail_tweaker:0.8> on a sofa <hypernet:anime:1>", "a cat on a sofa"),
        ("a city at night BREAK neon lights", "a city at night, neon lights"),
        ("a [cat:dog:0.5] in the snow", "a cat dog in the snow"),
        ("[sunrise:10] over [mountains::0.3], [oil|watercolor] painting", "sunrise over mountains, oil watercolor painting"),
        (r"mario \(character\) \[nintendo\]", "mario character nintendo"),
        (r"\((cat:1.3)\)", "cat"),
        ("a cat AND a dog:1.2", "a cat, a dog"),
        ("(a cat, sitting:0.9) on [a [red:blue:5] mat]", "a cat, sitting on a red blue mat"),
        ("(unbalanced emphasis", "unbalanced emphasis"),
        ("at 12:30 sharp", "at 12:30 sharp"),
        ("", ""),
    ],
)
def test_clean_prompt_strips_webui_syntax_and_keeps_the_words(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean


@pytest.mark.parametrize("raw", ["a (corgi:1.2) BREAK [x:y:3] <lora:a:1>", r"mario \(character\)", "plain words."])
def test_clean_prompt_is_idempotent(raw: str) -> None:
    once = clean_prompt(raw)
    assert clean_prompt(once) == once
