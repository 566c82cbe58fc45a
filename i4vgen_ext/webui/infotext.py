"""The one ``I4VGen`` infotext key: written into ``p.extra_generation_params`` as compact JSON of the settings and
what the run decided, read back on paste.

Details: docs/webui-host.md §Infotext.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Mapping, Optional

from ..core.settings import EXTRA_NAMES, METHOD_FIELDS, I4VGenSettings
from .fields import default

INFOTEXT_KEY = "I4VGen"


def infotext_value(
    settings: I4VGenSettings, *, anchor_index: Optional[int], ranker: Optional[str],
    unet_calls: Optional[Mapping[str, int]] = None, return_candidates: bool = False,
    extras: Optional[Mapping[str, Any]] = None,
) -> str:
    """``anchor_index``/``ranker`` None: no anchor was chosen (mode "evs"), so neither is recorded."""
    record: Dict[str, Any] = settings.method_dict()
    if anchor_index is not None:
        record["chosen_anchor"] = int(anchor_index)
    if ranker is not None:
        record["ranked_by"] = ranker
    record["return_candidates"] = bool(return_candidates)
    record.update(extras or {})
    if unet_calls:
        record["unet_calls"] = {k: int(v) for k, v in unet_calls.items()}
    return json.dumps(record, separators=(",", ":"), sort_keys=False)


def stopped_value(settings: I4VGenSettings, request: Any, action: str, stage: str) -> str:
    """The value for a video that was interrupted or skipped: its settings, and where it stopped (no UNet calls or
    anchor: the run did not finish, so pasting it back runs the whole method again)."""
    record: Dict[str, Any] = settings.method_dict()
    record.update(request.extra_record())
    record[action] = stage
    return json.dumps(record, separators=(",", ":"), sort_keys=False)


def parse_infotext_value(value: Any) -> Optional[Dict[str, Any]]:
    """The dict behind an ``I4VGen`` value (already unquoted by the host's parser), or None if unreadable."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        return None
    try:
        record = json.loads(value)
    except ValueError:
        try:  # a value still carrying its quotes
            record = json.loads(json.loads(value))
        except (ValueError, TypeError):
            return None
    return record if isinstance(record, dict) else None


def paste_getter(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """A callable infotext field for ``Script.infotext_fields``: both the UI paste (``infotext_utils.connect_paste``)
    and the API's ``Api.apply_infotext`` call it with the parsed parameters dict.

    ``enable`` reads as True when the key is present and False when it is not, so pasting a plain image's
    parameters switches I4VGen off. The manual anchor index is pasted as the index the run used, so pasting
    reproduces the same video without re-ranking. The WebUI's own settings (mode, EVS) missing from an I4VGen
    record paste as their defaults: the run that wrote it used them. The anchor image is cleared with a gradio
    update (A1111 passes ``gr.update`` values through, ``infotext_utils.paste_func``) when the run had none."""

    def get(params: Mapping[str, Any]) -> Any:
        record = parse_infotext_value(params.get(INFOTEXT_KEY))
        if name == "enable":
            return record is not None
        if record is None:
            return None
        if name == "anchor_index":
            return record.get("chosen_anchor", record.get("anchor_index"))
        if name == "anchor_image":
            if "anchor_image" in record:
                return None  # the picture is not in the infotext: keep what the panel holds
            import gradio as gr

            return gr.update(value=None)
        if name in EXTRA_NAMES:
            return record.get(name, default(name))
        return record.get(name)

    get.__name__ = f"i4vgen_paste_{name}"
    return get


PASTE_NAMES = ("enable",) + METHOD_FIELDS + ("return_candidates",) + EXTRA_NAMES
