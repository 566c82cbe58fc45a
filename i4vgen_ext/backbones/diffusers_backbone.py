"""AnimateDiff on diffusers as an I4VGen backbone (the standalone library's and CLI's model): a ``UNetMotionModel``
for the video stages, a ``UNet2DConditionModel`` view of the same spatial weights for the image stage, and the
core's ``sample_ddim`` as the sampler.

Details and typical use: docs/backbones.md §AnimateDiff.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..core.denoiser import FixedSchedule, StepCallback
from ..core.sampling import sample_ddim
from ..core.schedule import ScheduleConfig, alphas_cumprod_for, sampling_timesteps
from .feature_injection import AttentionStore, SelfAttentionFeatures
from .loading import ModelParts, load_model_parts, require_standalone
from .lora import fuse_loras, read_lora, require_peft

__all__ = ["DiffusersBackbone", "DiffusersDenoiser"]


class DiffusersBackbone:
    """The loaded model: text encoding, the two UNet views, VAE decode/encode, and a motion-module call counter."""

    def __init__(self, parts: ModelParts, *, device: str | torch.device, dtype: torch.dtype,
                 schedule: ScheduleConfig = ScheduleConfig(), loras: Sequence[dict] = ()) -> None:
        # The loaders already created every weight in ``dtype``; only the device changes here.
        self.unet = parts.unet.to(device).eval()
        self.image_unet = parts.image_unet.eval()  # shares every tensor with self.unet: already moved
        self.vae = parts.vae.to(device).eval()
        self.text_encoder = parts.text_encoder.to(device).eval()
        for model in (self.unet, self.vae, self.text_encoder):
            _own_aligned_memory(model)
        self.tokenizer = parts.tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.schedule = schedule
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.default_size: Tuple[int, int] = (side, side)
        self.description: Dict[str, Any] = {
            **parts.description, "loras": list(loras), "dtype": str(dtype).removeprefix("torch."),
            "device": str(self.device), "schedule": schedule.to_dict(),
        }
        self.motion_module_calls = 0
        self._hooks = [m.register_forward_hook(self._count_motion_call) for m in self._motion_modules()]

    @classmethod
    def load(
        cls,
        model: Optional[str] = None,
        motion_module: Optional[str] = None,
        loras: Sequence[Tuple[str, float]] = (),
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        schedule: ScheduleConfig = ScheduleConfig(),
        *,
        single_file_config: Optional[str] = None,
        trust_pickle: bool = False,
    ) -> "DiffusersBackbone":
        """Load a model (None: the embedded demo model), its motion module and LoRAs. The sampling schedule is
        ``schedule`` (the official linear-beta DDIM by default), never the model folder's own scheduler.

        ``single_file_config``: a diffusers folder whose configs describe a single-file checkpoint of an unknown
        architecture. ``trust_pickle``: allow pickled .ckpt files that hold more than tensors (runs their code)."""
        require_standalone()
        lora_files = [(path, weight, read_lora(path)) for path, weight in loras]  # unreadable ones fail first
        if lora_files:
            require_peft()
        parts = load_model_parts(model, motion_module, dtype=dtype, single_file_config=single_file_config,
                                 trust_pickle=trust_pickle)
        reports = [report.to_dict() for report in fuse_loras(parts.unet, parts.text_encoder, lora_files)]
        return cls(parts, device=device, dtype=dtype, schedule=schedule, loras=reports)

    # ---- motion-module accounting -------------------------------------------------------------------------
    def _motion_modules(self) -> List[torch.nn.Module]:
        from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

        return [m for m in self.unet.modules() if isinstance(m, AnimateDiffTransformer3D)]

    def _count_motion_call(self, module, inputs, output) -> None:
        self.motion_module_calls += 1

    # ---- text --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """(1, 77, D) CLIP embeddings, as diffusers' ``encode_prompt`` computes them (no clip skip, no mask)."""
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

    def denoiser(self, prompt: str, negative_prompt: str, guidance: float, steps: int, *,
                 image_batch_size: Optional[int] = None) -> "DiffusersDenoiser":
        return DiffusersDenoiser(self, prompt, negative_prompt, guidance, steps, image_batch_size=image_batch_size)

    # ---- pixels <-> latents ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor, *, chunk_size: int = 8) -> List[Image.Image]:
        """(N, 4, h, w) scaled latents -> N RGB images (1/scaling_factor, (x/2+0.5) clamped, rounded to uint8)."""
        images: List[Image.Image] = []
        for chunk in latents.split(chunk_size):
            pixels = self.vae.decode(chunk.to(self.device, self.dtype) / self.vae.config.scaling_factor).sample
            pixels = (pixels / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
            images.extend(Image.fromarray(a) for a in (pixels * 255).round().astype(np.uint8))
        return images

    def decode_video(self, latents: torch.Tensor, *, chunk_size: int = 8) -> List[Image.Image]:
        """(1, 4, F, h, w) -> F frames."""
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise ValueError(f"expected video latents of shape (1, 4, F, h, w), got {tuple(latents.shape)}")
        return self.decode_images(latents[0].permute(1, 0, 2, 3), chunk_size=chunk_size)

    @torch.no_grad()
    def encode_image(self, image: Image.Image, *, sample: bool = False, generator: Optional[torch.Generator] = None,
                     size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """An RGB image -> its (4, h, w) scaled latent: the posterior mean, or a draw from it with ``sample``.

        ``size`` (width, height): resize to cover it and center-crop first; otherwise the image is center-cropped
        to multiples of the VAE scale factor."""
        image = image.convert("RGB")
        f = self.vae_scale_factor
        width, height = size if size is not None else (image.width // f * f, image.height // f * f)
        if width % f or height % f or width <= 0 or height <= 0:
            raise ValueError(f"image size must be a positive multiple of {f}, got {width}x{height}")
        image = _cover_and_crop(image, width, height)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        posterior = self.vae.encode((pixels * 2 - 1).to(self.device, self.dtype)).latent_dist
        latent = posterior.sample(generator) if sample else posterior.mode()
        return (latent * self.vae.config.scaling_factor)[0].float()


def _own_aligned_memory(model: torch.nn.Module) -> None:
    """Copy CPU tensors that still point into a memory-mapped weights file at an unaligned offset.

    Kernels take different (equally valid) summation orders for unaligned data, so the same weights loaded from a
    folder or from a single file would give results that differ in the last bits; owned, aligned copies make
    every load path compute identically (and keep no weights file mapped)."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def _cover_and_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


class DiffusersDenoiser(FixedSchedule):
    """The ``Denoiser`` protocol over a ``DiffusersBackbone`` with one prompt, negative prompt and guidance.

    Classifier-free guidance is the official one: [uncond, cond] in ONE UNet call, eps = u + g * (c - u);
    ``guidance <= 1`` runs a single conditional pass. ``unet_calls`` counts UNet forwards actually run: with
    ``image_batch_size`` smaller than N, one image-mode step costs ceil(N / image_batch_size) calls.

    It has the optional attention capability (``record_attention`` / ``inject_attention``, EVS's Selective Feature
    Injection; see ``feature_injection``), which acts on its own video-mode calls only."""

    def __init__(self, backbone: DiffusersBackbone, prompt: str, negative_prompt: str, guidance: float, steps: int,
                 *, image_batch_size: Optional[int] = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if image_batch_size is not None and image_batch_size < 1:
            raise ValueError(f"image_batch_size must be at least 1, got {image_batch_size}")
        self.backbone = backbone
        self.guidance = float(guidance)
        self.do_cfg = self.guidance > 1.0
        self.image_batch_size = image_batch_size
        self.schedule = backbone.schedule
        self._alphas_cumprod = alphas_cumprod_for(self.schedule)
        self._timesteps = sampling_timesteps(steps, self.schedule)
        cond = backbone.encode_text(prompt)
        self.embeddings = torch.cat([backbone.encode_text(negative_prompt), cond]) if self.do_cfg else cond
        self.unet_calls = 0
        self._attention = SelfAttentionFeatures(backbone.unet)

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, t: int, *, video: bool) -> torch.Tensor:
        if video:
            if x.ndim != 5:
                raise ValueError(f"video mode takes (B, 4, F, h, w) latents, got {tuple(x.shape)}")
            with self._attention.during_call(t):
                return self._guided(self.backbone.unet, x, t, frames=x.shape[2])
        if x.ndim != 4:
            raise ValueError(f"image mode takes (N, 4, h, w) latents, got {tuple(x.shape)}")
        size = self.image_batch_size or x.shape[0]
        return torch.cat([self._guided(self.backbone.image_unet, chunk, t, frames=None) for chunk in x.split(size)])

    def record_attention(self, layers: str = "all", *, timesteps: Optional[Sequence[int]] = None):
        """Context manager yielding an ``AttentionStore`` of the spatial self-attention Q, K, V of ``layers`` in
        this denoiser's video-mode calls; ``timesteps``: keep only the records filed under these."""
        return self._attention.record(layers, timesteps=timesteps)

    def inject_attention(self, store: AttentionStore, gamma: float, layers: str = "all"):
        """Context manager: video-mode calls at timestep t attend with gamma*Q_inv + (1-gamma)*Q, K_inv, V_inv in
        ``layers``, reading ``store``'s records filed under t (EVS Eq. 11)."""
        return self._attention.inject(store, gamma, layers)

    def _guided(self, unet, x: torch.Tensor, t: int, *, frames: Optional[int]) -> torch.Tensor:
        backbone = self.backbone
        batch = x.shape[0]
        rows = self.embeddings.repeat_interleave(batch, dim=0)  # [uncond x B, cond x B] (or cond x B)
        if frames is not None:
            rows = rows.repeat_interleave(frames, dim=0)  # UNetMotionModel wants B*F rows
        model_input = torch.cat([x, x]) if self.do_cfg else x
        timestep = torch.tensor(int(t), dtype=torch.long, device=backbone.device)
        eps = unet(model_input.to(backbone.device, backbone.dtype), timestep, encoder_hidden_states=rows).sample
        self.unet_calls += 1
        if self.do_cfg:
            uncond, cond = eps.chunk(2)
            eps = uncond + self.guidance * (cond - uncond)
        return eps.to(device=x.device, dtype=x.dtype)

    def denoise(self, x: Optional[torch.Tensor], noise: torch.Tensor, *, steps: int, video: bool, stage: str,
                callback: Optional[StepCallback] = None) -> torch.Tensor:
        return sample_ddim(
            lambda latents, t: self.predict_noise(latents, t, video=video), x, noise, steps=steps,
            timesteps=self._timesteps, alphas_cumprod=self._alphas_cumprod, config=self.schedule, stage=stage,
            callback=callback,
        )
