"""I2VGen-XL (diffusers) as an I4VGen backbone: the user's image, VAE-encoded, is the anchor, and NI-VSDS and
regeneration run through our own DDIM loop with the conditioning the diffusers ``I2VGenXLPipeline`` builds.

Details and typical use: docs/backbones.md §I2VGen-XL.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from PIL import Image

from ..core.denoiser import FixedSchedule, StepCallback, notify
from ..core.noise import Noises
from ..core.pipeline import I4VGenResult, run_i4vgen
from ..core.settings import I4VGenSettings
from ..errors import ImageModeUnsupported

# The pipeline's own call defaults (``I2VGenXLPipeline.__call__`` and its docstring example).
DEFAULTS: Dict[str, Any] = {"width": 1280, "height": 704, "frames": 16, "steps": 50, "guidance": 9.0, "fps": 16}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----------------------------------------------------------------------------------------------------------
# Pure helpers: preprocessing and parameterisation, each as the pipeline does it.
# ----------------------------------------------------------------------------------------------------------
def center_crop_wide(image: Image.Image, size: Tuple[int, int]) -> Image.Image:
    """Box-resize so the image just covers ``size`` (width, height), then center-crop to it (the pipeline's
    ``_center_crop_wide``, including its floor-divided target size)."""
    width, height = size
    scale = min(image.width / width, image.height / height)
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=Image.BOX)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_latents_with_position_mask(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """The UNet's channel-concatenated image condition: the image latent (1, 4, h, w) as frame 0, then F - 1
    constant frames holding k / (F - 1) for k = 1 .. F - 1 -> (1, 4, F, h, w)."""
    first = latent.unsqueeze(2)
    masks = [torch.ones_like(first) * ((k + 1) / (frames - 1)) for k in range(frames - 1)]
    return torch.cat([first, *masks], dim=2)


def to_epsilon(
    output: torch.Tensor, x_t: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The noise a model output implies at x_t (the same expressions as ``DDIMScheduler.step``'s pred_epsilon)."""
    a, b = alpha_cumprod, 1 - alpha_cumprod
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return a**0.5 * output + b**0.5 * x_t
    if prediction_type == "sample":
        return (x_t - a**0.5 * output) / b**0.5
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def choose_variant(model_path: str, dtype: torch.dtype, variant: Optional[str]) -> Optional[str]:
    """An explicit variant wins; otherwise fp16 weights are used for fp16 runs when they exist (always assumed
    for a hub id, whose repository ships them)."""
    if variant is not None or dtype != torch.float16:
        return variant
    unet = Path(model_path) / "unet"
    if not Path(model_path).is_dir():
        return "fp16"
    return "fp16" if any(unet.glob("*.fp16.*")) else None


def hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# ----------------------------------------------------------------------------------------------------------
# The conditioning of one run, CFG-batched [uncond, cond] when guidance > 1.
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class I2VConditioning:
    prompt_embeds: torch.Tensor  # (B, 77, D) text
    image_embeddings: torch.Tensor  # (B, 1, D_clip), zeros in the unconditional row
    image_latents: torch.Tensor  # (B, 4, F, h, w): image latent + position-mask frames
    fps: torch.Tensor  # (B,) micro-condition
    image_latent: torch.Tensor  # (4, h, w) the encoded image, also I4VGen's anchor


class I2VGenXLDenoiser(FixedSchedule):
    """The core's ``Denoiser`` over I2VGen-XL's UNet for one prompt, image and step count (video mode only).

    ``predict_noise`` returns epsilon whatever the model predicts; ``denoise`` runs the model's own DDIM
    scheduler on the raw (guided) model output, operation for operation as the pipeline's loop."""

    def __init__(self, unet: Any, scheduler: Any, conditioning: I2VConditioning, *, guidance: float, frames: int,
                 steps: int, dtype: torch.dtype, device: torch.device):
        self.unet, self.scheduler, self.conditioning = unet, scheduler, conditioning
        self.guidance, self.frames, self.dtype, self.device = float(guidance), int(frames), dtype, device
        self.scheduler.set_timesteps(steps)
        self.prediction_type: str = scheduler.config.prediction_type
        self._timesteps = [int(t) for t in self.scheduler.timesteps]
        self._alphas_cumprod = self.scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone()
        self.unet_calls = 0

    @property
    def image_latent(self) -> torch.Tensor:
        return self.conditioning.image_latent

    @property
    def do_cfg(self) -> bool:
        return self.guidance > 1

    @torch.no_grad()
    def model_output(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """One CFG-batched UNet evaluation: the guided output in the model's own parameterisation."""
        self._check_video(x)
        x = x.to(self.device, self.dtype)
        c = self.conditioning
        model_input = torch.cat([x] * 2) if self.do_cfg else x
        model_input = self.scheduler.scale_model_input(model_input, t)
        out = self.unet(
            model_input, torch.tensor(int(t), dtype=torch.long, device=self.device),
            encoder_hidden_states=c.prompt_embeds, fps=c.fps, image_latents=c.image_latents,
            image_embeddings=c.image_embeddings, return_dict=False,
        )[0]
        self.unet_calls += 1
        if self.do_cfg:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance * (cond - uncond)
        return out

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool = True) -> torch.Tensor:
        self._require_video(video)
        out = self.model_output(x, t)
        x_t = x.to(out.device, out.dtype)
        return to_epsilon(out, x_t, self._alphas_cumprod[int(t)], self.prediction_type).to(x.dtype)

    @torch.no_grad()
    def denoise(
        self,
        x: Optional[torch.Tensor],
        noise: torch.Tensor,
        *,
        steps: int,
        video: bool = True,
        stage: str = "denoise",
        callback: Optional[StepCallback] = None,
    ) -> torch.Tensor:
        """DDIM (eta 0) over the last ``steps`` timesteps. ``x is None``: start from ``noise * init_noise_sigma``
        and run all S steps; else noise ``x`` to ``timesteps[S - steps]`` with ``noise`` first."""
        self._require_video(video)
        total = len(self._timesteps)
        if not 0 <= steps <= total:
            raise ValueError(f"steps must be in [0, {total}], got {steps}")
        run = self._timesteps[total - steps:] if steps else []
        noise = noise.to(self.device, self.dtype)
        if x is None:
            if steps != total:
                raise ValueError(f"a full denoise runs all {total} steps, got steps={steps}")
            latents = noise * self.scheduler.init_noise_sigma
        elif not run:
            return x
        else:
            start = torch.tensor([run[0]], dtype=torch.long)
            latents = self.scheduler.add_noise(x.to(self.device, self.dtype), noise, start)
        self._check_video(latents)
        for i, t in enumerate(run):
            out = self.model_output(latents, t)
            latents = self.scheduler.step(out, t, latents, eta=0.0, return_dict=False)[0]
            notify(callback, stage, i + 1, len(run), t)
        return latents

    def _require_video(self, video: bool) -> None:
        if not video:
            raise ImageModeUnsupported(
                "I2VGen-XL has no image mode, so I4VGen's candidate (anchor) stage cannot run on it; pass the "
                "encoded input image as the anchor: run_i4vgen(..., anchor=denoiser.image_latent)"
            )

    def _check_video(self, x: torch.Tensor) -> None:
        expected = tuple(self.conditioning.image_latents.shape[1:])
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"video latents must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------------------
# The backbone: the loaded components and the pipeline's encoding stages.
# ----------------------------------------------------------------------------------------------------------
class I2VGenXLBackbone:
    name = "i2vgen-xl"

    def __init__(self, pipe: Any, *, source: str, variant: Optional[str], device: torch.device, dtype: torch.dtype):
        self.pipe, self.source, self.variant = pipe, source, variant
        self.device, self.dtype = torch.device(device), dtype
        self.vae, self.unet, self.scheduler = pipe.vae, pipe.unet, pipe.scheduler
        self.text_encoder, self.tokenizer = pipe.text_encoder, pipe.tokenizer
        self.image_encoder, self.feature_extractor = pipe.image_encoder, pipe.feature_extractor
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        from diffusers.image_processor import VaeImageProcessor

        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)
        scheduler_class = self.scheduler.__class__.__name__
        if scheduler_class != "DDIMScheduler":
            raise ValueError(f"{source}: I2VGen-XL is sampled with DDIMScheduler, the folder has {scheduler_class}")
        if self.scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{source}: unknown prediction_type {self.scheduler.config.prediction_type!r}")

    @classmethod
    def load(cls, model_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             variant: Optional[str] = None) -> "I2VGenXLBackbone":
        """Load a diffusers I2VGen-XL folder (``model_index.json`` + vae, unet, scheduler, text_encoder,
        tokenizer, image_encoder, feature_extractor), or a hub id such as ``ali-vilab/i2vgen-xl`` when the hub
        is reachable. fp16 runs use the fp16 weight variant when present."""
        from .loading import require_standalone

        require_standalone()
        from diffusers import I2VGenXLPipeline

        path = Path(model_path).expanduser()
        local = path.is_dir()
        if local and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} is not a diffusers I2VGen-XL folder: model_index.json is missing")
        if not local:
            if path.exists() or str(model_path).count("/") != 1 or hub_offline():
                why = "hub access is off (HF_HUB_OFFLINE)" if hub_offline() else "nor a hub id (owner/name)"
                raise FileNotFoundError(f"{model_path} is not an I2VGen-XL folder, and {why}")
        source = str(path) if local else str(model_path)
        chosen = choose_variant(source, dtype, variant)
        with warnings.catch_warnings():
            # diffusers 0.42 renamed torch_dtype to dtype; the old name keeps older diffusers working.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = I2VGenXLPipeline.from_pretrained(source, torch_dtype=dtype, variant=chosen, local_files_only=local)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return cls(pipe, source=source, variant=chosen, device=torch.device(device), dtype=dtype)

    # Facts for run.json and the CLI --------------------------------------------------------------------------
    @property
    def default_size(self) -> Tuple[int, int]:
        """(width, height): the pipeline's default 1280 x 704, whatever the UNet's sample_size says."""
        return DEFAULTS["width"], DEFAULTS["height"]

    @property
    def scheduler_config(self) -> Dict[str, Any]:
        return {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}

    @property
    def description(self) -> Dict[str, Any]:
        import diffusers

        return {
            "backbone": self.name,
            "model": self.source,
            "variant": self.variant,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "diffusers": diffusers.__version__,
            "scheduler": {"class": self.scheduler.__class__.__name__, **self.scheduler_config},
            "prediction_type": self.scheduler.config.prediction_type,
            "vae_scale_factor": self.vae_scale_factor,
            "vae_scaling_factor": float(self.vae.config.scaling_factor),
            "default_size": list(self.default_size),
            "anchor": "the input image (VAE posterior sample x scaling_factor), no candidate stage",
        }

    # Encoding stages (the pipeline's, in its order) -------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(
        self, prompt: str, negative_prompt: str, guidance: float, clip_skip: Optional[int] = 1
    ) -> torch.Tensor:
        """Text embeddings, [negative, prompt] when guidance > 1. ``clip_skip=1`` (the pipeline's default) takes
        the penultimate hidden state through the final layer norm."""
        cond = self._encode_text(prompt, self.tokenizer.model_max_length, clip_skip)
        if guidance <= 1:
            return cond
        uncond = self._encode_text(negative_prompt or "", cond.shape[1], clip_skip)
        return torch.cat([uncond, cond])

    def _encode_text(self, text: str, max_length: int, clip_skip: Optional[int]) -> torch.Tensor:
        tokens = self.tokenizer([text], padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(self.device) if use_mask else None
        ids = tokens.input_ids.to(self.device)
        if clip_skip is None:
            embeds = self.text_encoder(ids, attention_mask=mask)[0]
        else:
            hidden = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
            # transformers >= 5.6 flattened CLIPTextModel (no .text_model); older versions nest it.
            final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
            embeds = final_norm(hidden[-(clip_skip + 1)])
        return embeds.to(self.text_encoder.dtype)

    @torch.no_grad()
    def encode_image_embedding(self, image: Image.Image, width: int, guidance: float) -> torch.Tensor:
        """CLIP image embedding of a width x width center crop resized to the feature extractor's crop size,
        (1, 1, D), with an all-zero unconditional row first when guidance > 1."""
        crop = self.feature_extractor.crop_size
        square = center_crop_wide(image.convert("RGB"), (width, width))
        square = square.resize((crop["width"], crop["height"]), Image.BILINEAR)
        pixels = self.image_processor.numpy_to_pt(self.image_processor.pil_to_numpy(square))
        pixels = self.feature_extractor(images=pixels, do_normalize=True, do_center_crop=False, do_resize=False,
                                        do_rescale=False, return_tensors="pt").pixel_values
        encoder_dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(pixels.to(self.device, encoder_dtype)).image_embeds.unsqueeze(1)
        return torch.cat([torch.zeros_like(embeds), embeds]) if guidance > 1 else embeds

    @torch.no_grad()
    def encode_image(self, image: Image.Image, width: Optional[int] = None, height: Optional[int] = None, *,
                     sample: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The image as the pipeline conditions on it: center-cropped to width x height (default: its own size),
        VAE-encoded, x scaling_factor -> (4, h, w). ``sample`` draws from the posterior with ``generator``, as the
        pipeline does (with the global RNG); ``sample=False`` takes the posterior mean."""
        width, height = width or image.width, height or image.height
        self._check_size(width, height)
        cropped = center_crop_wide(image.convert("RGB"), (width, height))
        pixels = self.image_processor.preprocess(cropped).to(self.device, self._vae_dtype)
        posterior = self.vae.encode(pixels).latent_dist
        latent = posterior.sample(generator) if sample else posterior.mode()
        return (latent * self.vae.config.scaling_factor)[0]

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, chunk_size: int = 1) -> List[Image.Image]:
        """(1, 4, F, h, w) scaled latents -> F PIL frames, decoded ``chunk_size`` frames at a time."""
        if latents.dim() != 5 or latents.shape[0] != 1:
            raise ValueError(f"decode_video takes one video (1, 4, F, h, w), got {tuple(latents.shape)}")
        frames = (latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor).to(self.device, self._vae_dtype)
        chunks = [frames[i:i + chunk_size] for i in range(0, len(frames), chunk_size)]
        decoded = torch.cat([self.vae.decode(chunk).sample for chunk in chunks])
        return self.image_processor.postprocess(decoded.float(), output_type="pil")

    def denoiser(
        self,
        prompt: str,
        negative_prompt: str,
        guidance: float,
        steps: int,
        image: Image.Image,
        *,
        width: int,
        height: int,
        frames: int,
        fps: int = DEFAULTS["fps"],
        generator: Optional[torch.Generator] = None,
        image_latent: Optional[torch.Tensor] = None,
        clip_skip: Optional[int] = 1,
    ) -> I2VGenXLDenoiser:
        """A ``Denoiser`` bound to this prompt, image, video size and step count, with its own scheduler.

        ``image`` is the original picture (the CLIP embedding takes its own square crop of it). The image latent
        conditioning frame 0 is ``image_latent`` when given, else ``encode_image(image, width, height,
        generator=generator)``; either way it is ``denoiser.image_latent``, I4VGen's anchor."""
        self._check_size(width, height)
        if frames < 2:
            raise ValueError(f"I2VGen-XL needs at least 2 frames (frame 0 carries the image), got {frames}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        from diffusers import DDIMScheduler

        batch = 2 if guidance > 1 else 1
        prompt_embeds = self.encode_prompt(prompt, negative_prompt, guidance, clip_skip)
        image_embeddings = self.encode_image_embedding(image, width, guidance)
        if image_latent is None:
            image_latent = self.encode_image(image, width, height, generator=generator)
        expected = (4, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if tuple(image_latent.shape) != expected:
            raise ValueError(f"image_latent must be {expected} for {width} x {height}, got {tuple(image_latent.shape)}")
        latent = image_latent.to(self.device, image_embeddings.dtype)
        image_latents = image_latents_with_position_mask(latent[None], frames).repeat(batch, 1, 1, 1, 1)
        conditioning = I2VConditioning(
            prompt_embeds=prompt_embeds, image_embeddings=image_embeddings, image_latents=image_latents,
            fps=torch.tensor([int(fps)] * batch, device=self.device), image_latent=latent,
        )
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        return I2VGenXLDenoiser(self.unet, scheduler, conditioning, guidance=guidance, frames=frames, steps=steps,
                                dtype=self.unet.dtype, device=self.device)

    @property
    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _check_size(self, width: int, height: int) -> None:
        if width % 8 or height % 8 or width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive multiples of 8, got {width} x {height}")


def run_i2v_i4vgen(
    backbone: I2VGenXLBackbone,
    settings: I4VGenSettings,
    image: Image.Image,
    noises: Noises,
    *,
    fps: int = DEFAULTS["fps"],
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
) -> I4VGenResult:
    """I4VGen with the input image as the anchor: static video of its latent -> NI-VSDS -> regeneration, with the
    full I2V conditioning. Costs K + n_re UNet calls (no candidate stage, no ranking).

    ``generator`` draws the VAE posterior sample of the image. A second ``seeded_generator(settings.seed)`` is a
    safe choice: its 4*h*w values repeat the start of ``draw_noises``' candidate noise, which this mode never uses,
    and never reach the NI-VSDS or regeneration noise drawn after it."""
    default_width, default_height = backbone.default_size
    denoiser = backbone.denoiser(
        settings.prompt, settings.negative_prompt, settings.guidance, settings.steps, image,
        width=settings.width or default_width, height=settings.height or default_height, frames=settings.frames,
        fps=fps, generator=generator,
    )
    return run_i4vgen(denoiser, settings, noises, anchor=denoiser.image_latent, callback=callback)
