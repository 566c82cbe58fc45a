"""Prompt hygiene before scoring: WebUI prompt syntax out, the words kept.

Reward models were trained on plain captions; ``(cat:1.3)`` or ``<lora:x:0.8>`` would only waste their short token
budget (ImageReward keeps 35 BERT tokens) and shift the scores."""
from __future__ import annotations

import re

# Escaped brackets are literal text in a WebUI prompt, not emphasis; parked on a private-use code point while the
# syntax is removed, then dropped like the syntax brackets (so cleaning twice changes nothing).
_ESCAPED = re.compile(r"\\[()\[\]]")
_PARKED = "\ue000"

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_TAG = re.compile(r"<[^<>]*>")  # <lora:name:0.8>, <hypernet:x:1>, <lyco:...>
_INNER_SQUARE = re.compile(r"\[([^\[\]]*)\]")
_INNER_ROUND = re.compile(r"\(([^()]*)\)")
_TRAILING_WEIGHT = re.compile(rf"\s*:\s*{_NUMBER}\s*$")
_AND_WEIGHT = re.compile(rf"\s*:\s*{_NUMBER}\s*(?=\bAND\b|$)")
_KEYWORDS = re.compile(r"\b(?:BREAK|AND)\b")


def _square(match: re.Match) -> str:
    """``[word]``, prompt editing ``[from:to:when]`` / ``[to:when]`` / ``[from::when]``, alternation ``[a|b]``."""
    body = match.group(1)
    if "|" in body:
        return " " + " ".join(body.split("|")) + " "
    parts = body.split(":")
    if len(parts) in (2, 3) and re.fullmatch(rf"\s*{_NUMBER}\s*", parts[-1]):
        parts = parts[:-1]
    return " " + " ".join(parts) + " "


def _round(match: re.Match) -> str:
    """``(word)``, ``(word:1.2)``."""
    return " " + _TRAILING_WEIGHT.sub("", match.group(1)) + " "


def _substitute_until_stable(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def clean_prompt(text: str) -> str:
    """The words of a WebUI prompt without its syntax.

    Removes LoRA / hypernetwork tags, emphasis ``(word:1.2)`` ``((word))`` ``[word]``, prompt editing
    ``[a:b:0.5]`` (both sides kept), alternation ``[a|b]``, ``BREAK`` and ``AND`` (with composable weights);
    escaped ``\\(`` ``\\)`` ``\\[`` ``\\]`` are dropped with their backslash, their words kept. Idempotent."""
    text = _ESCAPED.sub(_PARKED, text)
    text = _TAG.sub(" ", text)
    text = _substitute_until_stable(_INNER_SQUARE, _square, text)
    text = _substitute_until_stable(_INNER_ROUND, _round, text)
    text = re.sub(r"[()\[\]]", " ", text)  # unbalanced leftovers
    text = _AND_WEIGHT.sub(" ", text)
    text = _KEYWORDS.sub(",", text)
    text = text.replace(_PARKED, " ")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;!?])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    return text.strip(" ,")
