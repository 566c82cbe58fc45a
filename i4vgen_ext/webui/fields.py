"""How the panel presents the settings of ``core.settings.FIELDS``: labels, slider steps, grouping, and the
WebUI's names for the modes. Names, kinds, defaults, ranges and help come from the table; nothing here validates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..core.settings import EXTRA_NAMES, FIELD_BY_NAME, FieldSpec  # noqa: F401  (EXTRA_NAMES: the panel's order)

# In the WebUI "plain" is I4VGen switched off, so the panel offers the other modes; "evs" is its name for
# "plain+evs": AnimateDiff's own video, then EVS refinement.
WEBUI_MODES: Dict[str, str] = {"i4vgen": "i4vgen", "i4vgen+evs": "i4vgen+evs", "evs": "plain+evs"}
MODE_HELP = ("i4vgen: I4VGen. i4vgen+evs: I4VGen, then EVS refinement of its video. evs: AnimateDiff's own video, "
             "then EVS refinement (EVS refine after generation).")


@dataclass(frozen=True)
class Presentation:
    label: str
    step: Optional[float] = None  # sliders
    control: str = ""  # "dropdown", "radio" or "slider"; "" = by kind (checkbox, image, number, textbox)
    info: str = ""  # replaces the table's help under the control


PRESENTATION: Dict[str, Presentation] = {
    "preset": Presentation("Preset", control="dropdown"),
    "candidates": Presentation("Candidates N", 1, "slider"),
    "nivsds_fraction": Presentation("NI-VSDS fraction", 0.02, "slider"),
    "regen_strength": Presentation("Regeneration strength", 0.02, "slider"),
    "alpha_schedule": Presentation("NI-VSDS step sizes (alpha schedule)"),
    "ranker": Presentation("Ranker", control="dropdown"),
    "ranker_fallback": Presentation("Ranker fallback", control="dropdown"),
    "ranker_path": Presentation("Ranker folder (optional)",
                                info="The name of a folder inside models/ImageReward/ holding the ranker's files "
                                     "(not a path); empty: search the usual places."),
    "anchor_index": Presentation("Manual anchor index (-1: ranker)", info="Click a candidate below to pick it."),
    "mode": Presentation("Mode", control="radio"),
    "anchor_image": Presentation("Anchor image (optional)"),
    "anchor_sample": Presentation("Sample the VAE posterior"),
    "evs_strength": Presentation("EVS strength s_I", 0.01, "slider"),
    "evs_t2v_step": Presentation("EVS video-block step"),
    "evs_video_strength": Presentation("EVS video strength s_V", 0.01, "slider"),
    "evs_video_steps": Presentation("EVS video steps n_V"),
    "evs_fresh_bridge_noise": Presentation("Fresh bridge noise"),
    "evs_inversion": Presentation("DDIM inversion to t_V"),
    "evs_sfi": Presentation("Selective Feature Injection (SFI)"),
    "evs_sfi_gamma": Presentation("SFI gamma", 0.05, "slider"),
    "evs_sfi_layers": Presentation("SFI layers"),
}
# Rows of the panel, top to bottom (names not listed in a row get one of their own).
ROWS: Tuple[Tuple[str, ...], ...] = (
    ("preset", "candidates"), ("nivsds_fraction", "regen_strength"), ("alpha_schedule",),
    ("ranker", "ranker_fallback"), ("ranker_path",),
)
EVS_ROWS: Tuple[Tuple[str, ...], ...] = (
    ("evs_strength", "evs_t2v_step"), ("evs_video_strength", "evs_video_steps"),
    ("evs_fresh_bridge_noise", "evs_inversion"), ("evs_sfi", "evs_sfi_gamma", "evs_sfi_layers"),
)


def spec(name: str) -> FieldSpec:
    return FIELD_BY_NAME[name]


def default(name: str):
    """The panel's default: the table's, with the mode under its WebUI name."""
    return "i4vgen" if name == "mode" else FIELD_BY_NAME[name].default
