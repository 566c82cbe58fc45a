"""The ``clip`` (CLIP ViT-L/14 cosine) and ``pickscore`` (PickScore v1) rankers, through transformers' CLIPModel.

Both score with the full ``CLIPModel.forward``, whose outputs (normalised ``text_embeds`` / ``image_embeds``,
``logits_per_text``) read the same in transformers 4.x and 5.x."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from ..errors import RankerLoadError
from .base import DeviceSession, DTypeLike, ModelRanker, describe_device, load_failure, resolve_dtype
from .locate import PathLike, has_files, hub_folder, is_offline
from .prompt import clean_prompt

log = logging.getLogger("i4vgen.rankers")

# safetensors only, on every path: a pickled ``pytorch_model.bin`` is never handed to transformers (transformers 4.30
# would unpickle it with plain torch.load, which runs any code the file carries).
WEIGHT_FILES = ("model.safetensors",)
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PROCESSOR_FILES = ["preprocessor_config.json", TOKENIZER_FILES]


@dataclass(frozen=True)
class ClipSpec:
    name: str
    model_id: str
    processor_id: str
    use_logit_scale: bool  # PickScore: logit_scale.exp() * cosine; CLIP score: the plain cosine

    @property
    def hint(self) -> str:
        where = f"https://huggingface.co/{self.model_id}"
        if self.processor_id != self.model_id:
            where += f" (its tokenizer and preprocessor_config.json from https://huggingface.co/{self.processor_id})"
        return (f"download {where} (model.safetensors, not pytorch_model.bin) into one folder and give it as the "
                "ranker path (a path in the CLI, the name of a folder inside models/ImageReward/ in the WebUI), or "
                "run once online to fill the Hugging Face cache")


CLIP = ClipSpec("clip", "openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14", use_logit_scale=False)
PICKSCORE = ClipSpec("pickscore", "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                     use_logit_scale=True)


def locate_clip(spec: ClipSpec, path: Optional[PathLike], offline: bool) -> Tuple[Path, Path, List[str]]:
    """(model folder, processor folder, places searched): the explicit path (its processor files there or in
    ``processor/``, else the processor from the HF cache on disk: an explicit path never downloads), else the HF
    cache, else a hub download when online. Weights must be ``model.safetensors``."""
    offline = is_offline(offline)
    searched: List[str] = []
    explicit = path not in (None, "")
    if explicit:
        model = Path(path).expanduser()
        searched.append(str(model))
        if has_files(model, ["config.json"]) and not has_files(model, [WEIGHT_FILES]) and \
                any((model / name).is_file() for name in PICKLED_WEIGHTS):
            raise RankerLoadError(spec.name, "pickled weights refused (safetensors only)", searched, spec.hint,
                                  f"{model} holds pytorch_model.bin but no model.safetensors; pickled weights are never "
                                  "loaded: use the repository's model.safetensors")
        if not has_files(model, ["config.json", WEIGHT_FILES]):
            raise RankerLoadError(spec.name, "model files not found in the ranker path", searched, spec.hint,
                                  f"need config.json and {', '.join(WEIGHT_FILES)}")
        for processor in (model, model / "processor"):
            if has_files(processor, PROCESSOR_FILES):
                return model, processor, searched
            searched.append(str(processor))
    else:
        model, where = hub_folder(spec.model_id, ["config.json", WEIGHT_FILES], offline=offline)
        searched.append(where)
        if model is None:
            raise RankerLoadError(spec.name, "weights not found" + (" offline" if offline else ""), searched,
                                  spec.hint)
        if has_files(model, PROCESSOR_FILES):
            return model, model, searched
    processor, where = hub_folder(
        spec.processor_id, PROCESSOR_FILES,
        optional=["tokenizer_config.json", "special_tokens_map.json", "merges.txt", "vocab.json"],
        offline=offline or explicit,
    )
    searched.append(where)
    if processor is None:
        detail = ("an explicit ranker path is never completed from the hub: put the tokenizer and "
                  "preprocessor_config.json in it or in its processor/ folder") if explicit else ""
        raise RankerLoadError(spec.name, "tokenizer/processor not found" + (" offline" if offline else ""),
                              searched, spec.hint, detail)
    return model, processor, searched


class ClipRanker(ModelRanker):
    """Scores with a CLIPModel: cosine(text, image), times ``logit_scale.exp()`` for PickScore."""

    def __init__(self, spec: ClipSpec, model, tokenizer, image_processor, device: torch.device, batch_size: int = 16):
        super().__init__(model, device, batch_size)
        self.name, self.spec = spec.name, spec
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def inputs(self, prompt: str, images: Sequence[Image.Image]) -> Tuple[torch.Tensor, Any]:
        limit = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        tokens = self.tokenizer(clean_prompt(prompt), padding=True, truncation=True, max_length=limit,
                                return_tensors="pt")
        rgb = [image.convert("RGB") for image in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"], tokens

    @torch.no_grad()
    def _score_on(self, device: torch.device, pixels: torch.Tensor, tokens) -> List[float]:
        dtype = self.model.logit_scale.dtype
        scores = []
        with DeviceSession(self.model, device):
            ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
            for chunk in pixels.split(self.batch_size):
                out = self.model(input_ids=ids, attention_mask=mask, pixel_values=chunk.to(device, dtype))
                if self.spec.use_logit_scale:
                    scores.append(out.logits_per_text[0].float().cpu())
                else:
                    scores.append((out.text_embeds.float() @ out.image_embeds.float().T)[0].cpu())
        return [float(s) for s in torch.cat(scores)]


def check_loading_info(spec: ClipSpec, info: dict, folder: Path, searched: Sequence[str]) -> None:
    """transformers only warns about missing or unexpected weights; a ranker with random weights must not run."""
    problems = [f"missing key {k}" for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    problems += [f"unexpected key {k}" for k in info.get("unexpected_keys", []) if not k.endswith("position_ids")]
    problems += [f"key {m[0] if isinstance(m, (tuple, list)) else m} has the wrong shape"
                 for m in info.get("mismatched_keys", [])]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} differences)" if len(problems) > 8 else "")
        raise RankerLoadError(spec.name, "checkpoint does not match its config", searched, spec.hint,
                              f"{folder}: {shown}")


def load_clip_like(spec: ClipSpec, path: Optional[PathLike], device: Any, dtype: DTypeLike, offline: bool) -> ClipRanker:
    model_dir, processor_dir, searched = locate_clip(spec, path, offline)
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as error:
        raise RankerLoadError(spec.name, "transformers is not installed", searched, "pip install transformers") from error
    try:  # transformers 5: the PIL backend, the one 4.x always used, whether or not torchvision is installed
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    try:
        model, info = CLIPModel.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True,
                                                use_safetensors=True)
    except Exception as error:
        raise load_failure(spec.name, error, searched, spec.hint, model_dir) from error
    check_loading_info(spec, info, model_dir, searched)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
        image_processor = CLIPImageProcessor.from_pretrained(str(processor_dir), local_files_only=True)
    except Exception as error:
        raise RankerLoadError(spec.name, "unreadable tokenizer/processor", searched, spec.hint,
                              f"{processor_dir}: {error}") from error
    model = model.to(resolve_dtype(dtype)).eval().requires_grad_(False)
    log.info("%s loaded from %s (processor %s)", spec.name, model_dir, processor_dir)
    return ClipRanker(spec, model, tokenizer, image_processor, describe_device(device))


def load_clip(path: Optional[PathLike] = None, *, device: Any = "cpu", dtype: DTypeLike = None,
              offline: bool = False, webui_models_dir: Optional[PathLike] = None) -> ClipRanker:
    return load_clip_like(CLIP, path, device, dtype, offline)


def load_pickscore(path: Optional[PathLike] = None, *, device: Any = "cpu", dtype: DTypeLike = None,
                   offline: bool = False, webui_models_dir: Optional[PathLike] = None) -> ClipRanker:
    return load_clip_like(PICKSCORE, path, device, dtype, offline)
