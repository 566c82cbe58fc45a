"""What an I4VGen job in A1111 leaves in its results: the infotext, a comment per video, and the candidates with
infotexts that reproduce each as the anchor.

Details: docs/webui-host.md §Job.
"""
from __future__ import annotations

import json
import logging
from typing import Any, List

from . import shim
from .controlnet import hand_back_sampler
from .infotext import INFOTEXT_KEY, parse_infotext_value
from .plan import BatchOutcome, JobPlan

log = logging.getLogger("i4vgen")


def summary(outcome: BatchOutcome) -> str:
    if outcome.anchor_index is None:
        chosen = ""
    elif outcome.anchor_index < 0:
        chosen = "anchor from your image, "
    else:
        chosen = f"anchor {outcome.anchor_index} ({outcome.ranker}), "
    return f"{chosen}UNet calls {outcome.unet_calls}"


def timing(outcome: BatchOutcome) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items())


def caption(index: int, outcome: BatchOutcome) -> str:
    score = f", score {outcome.scores[index]:.3f}" if outcome.scores else ""
    mark = " ★ anchor" if index == outcome.anchor_index else ""
    prefix = f"video {outcome.iteration + 1}, " if outcome.iteration else ""
    return f"{prefix}candidate {index}{score}{mark}"


def finish(p: Any, processed: Any, plan: JobPlan) -> List[tuple]:
    """Plain-text infotext for the API's ``info`` (a callable would serialise as null), a comment per video, and
    the candidate images appended after AnimateDiff's outputs. Returns (image, caption) pairs for the gallery."""
    hand_back_sampler(p)
    done = [o for o in plan.outcomes if not o.interrupted]
    stopped = [o for o in plan.outcomes if o.interrupted and o.infotext]
    if done or stopped:
        p.extra_generation_params[INFOTEXT_KEY] = (done or stopped)[0].infotext
    else:
        p.extra_generation_params.pop(INFOTEXT_KEY, None)
    for outcome in plan.outcomes:
        if outcome.interrupted:
            p.comment(f"I4VGen video {outcome.iteration + 1} ({plan.request.mode}) {outcome.stopped}: "
                      "its frames are the unfinished video")
        else:
            p.comment(f"I4VGen video {outcome.iteration + 1} ({plan.request.mode}): {summary(outcome)}, "
                      f"{timing(outcome)}")
    if processed is not None:
        processed.comments = "".join(f"{c}\n" for c in p.comments)
    gallery: List[tuple] = []
    for outcome in done:
        for index, image in enumerate(outcome.candidate_images or []):
            image.info["parameters"] = candidate_infotext(p, outcome, index)  # PNG Info -> this anchor
            gallery.append((image, caption(index, outcome)))
    if plan.request.return_candidates and gallery and processed is not None:
        if plan.ad.injected:
            log.warning("I4VGen: candidates not added to the results: I4VGen's postprocess ran before "
                        "AnimateDiff's (check the extension order, metadata.ini)")
        else:
            for image, _ in gallery:
                processed.images.append(image)
                processed.infotexts.append(image.info["parameters"])
    return gallery


def candidate_infotext(p: Any, outcome: BatchOutcome, index: int) -> str:
    """The job's infotext for candidate ``index`` of a video: its I4VGen record names that candidate as the manual
    anchor, so pasting it back (PNG Info -> txt2img, or the API's ``infotext``) makes the same video from it."""
    record = parse_infotext_value(outcome.infotext) or {}
    record.update(anchor_index=index, chosen_anchor=index, candidate=index)
    if outcome.scores:
        record["candidate_score"] = outcome.scores[index]
    saved = p.extra_generation_params.get(INFOTEXT_KEY)
    p.extra_generation_params[INFOTEXT_KEY] = json.dumps(record, separators=(",", ":"))
    try:
        return shim.processing().create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds,
                                                 iteration=outcome.iteration, position_in_batch=0)
    finally:
        p.extra_generation_params[INFOTEXT_KEY] = saved
