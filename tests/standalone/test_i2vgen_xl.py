"""I2VGen-XL backbone on a tiny random model built and saved as a diffusers folder at test time (offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from i4vgen_ext.backbones.clip_tokenizer import write_clip_tokenizer
from i4vgen_ext.backbones.i2vgen_xl import (
    I2VGenXLBackbone,
    I2VGenXLDenoiser,
    ImageModeUnsupported,
    center_crop_wide,
    choose_variant,
    run_i2v_i4vgen,
)
from i4vgen_ext.core.denoiser import Denoiser
from i4vgen_ext.core.noise import draw_noises, seeded_generator
from i4vgen_ext.core.pipeline import run_i4vgen
from i4vgen_ext.core.schedule import add_noise
from i4vgen_ext.core.settings import I4VGenSettings

WIDTH, HEIGHT, FRAMES, STEPS, FPS = 80, 64, 4, 4, 12
TEXT_DIM = IMAGE_DIM = 16  # the UNet projects the CLIP image embedding from cross_attention_dim


def build_tiny_i2vgen_xl(folder: Path, *, prediction_type: str = "v_prediction") -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer-src", merges=0))
    vocab = len(tokenizer)
    torch.manual_seed(0)
    unet = I2VGenXLUNet(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=4, sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=TEXT_DIM, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    ))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=IMAGE_DIM, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=32, patch_size=8,
    ))
    # The scheduler settings of a zero-terminal-SNR v-prediction model, as I2VGen-XL's hub folder is said to use.
    scheduler = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True, prediction_type=prediction_type,
        clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
    )
    pipe = I2VGenXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet, scheduler=scheduler,
    )
    pipe.save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one thread is as fast, and stays fast when other test runs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_i2vgen_xl(tmp_path_factory.mktemp("i2vgen-xl"))


@pytest.fixture(scope="module")
def backbone(model_dir) -> I2VGenXLBackbone:
    return I2VGenXLBackbone.load(str(model_dir), "cpu", torch.float32)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.RandomState(0).randint(0, 256, size=(50, 90, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_denoiser(backbone, image, *, guidance=6.0, steps=STEPS, fps=FPS, seed=0,
                  negative="blurry") -> I2VGenXLDenoiser:
    return backbone.denoiser("a red boat", negative, guidance, steps, image, width=WIDTH, height=HEIGHT,
                             frames=FRAMES, fps=fps, generator=seeded_generator(seed))


def video_shape(backbone) -> tuple:
    return (1, 4, FRAMES, HEIGHT // backbone.vae_scale_factor, WIDTH // backbone.vae_scale_factor)


def capture_unet_calls(unet) -> tuple:
    calls: List[Dict[str, Any]] = []

    def hook(module, args, kwargs):
        calls.append({"sample": args[0].clone(), "timestep": args[1], **kwargs})

    return calls, unet.register_forward_pre_hook(hook, with_kwargs=True)


# Loading -------------------------------------------------------------------------------------------------------
def test_loads_the_diffusers_folder(backbone, model_dir):
    d = backbone.description
    assert d["backbone"] == "i2vgen-xl" and d["model"] == str(model_dir)
    assert d["prediction_type"] == "v_prediction" and d["scheduler"]["class"] == "DDIMScheduler"
    assert d["scheduler"]["rescale_betas_zero_snr"] is True and d["variant"] is None
    assert backbone.vae_scale_factor == 8 and backbone.default_size == (1280, 704)


def test_load_errors_are_explicit(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        I2VGenXLBackbone.load(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        I2VGenXLBackbone.load("ali-vilab/i2vgen-xl")


def test_fp16_variant_is_chosen_only_for_fp16_weights_that_exist(tmp_path, model_dir):
    assert choose_variant(str(model_dir), torch.float32, None) is None
    assert choose_variant(str(model_dir), torch.float16, None) is None  # the folder has no fp16 files
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert choose_variant(str(tmp_path), torch.float16, None) == "fp16"
    assert choose_variant("ali-vilab/i2vgen-xl", torch.float16, None) == "fp16"
    assert choose_variant(str(tmp_path), torch.float16, "bf16") == "bf16"


# Conditioning ----------------------------------------------------------------------------------------------------
def test_center_crop_matches_the_pipeline(image):
    from diffusers.pipelines.deprecated.i2vgen_xl.pipeline_i2vgen_xl import _center_crop_wide

    for size in [(64, 48), (48, 64), (32, 32), (1280, 704)]:
        ours, theirs = center_crop_wide(image, size), _center_crop_wide(image, size)
        assert ours.size == size and np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_unet_gets_the_full_conditioning(backbone, image):
    den = make_denoiser(backbone, image, guidance=6.0)
    assert isinstance(den, Denoiser)
    calls, handle = capture_unet_calls(backbone.unet)
    try:
        x = torch.randn(video_shape(backbone))
        den.predict_noise(x, den.timesteps[0], video=True)
    finally:
        handle.remove()
    (call,) = calls
    h, w = video_shape(backbone)[-2:]
    assert call["sample"].shape == (2, 4, FRAMES, h, w)  # CFG batch, 4 channels (+4 image channels inside)
    assert call["encoder_hidden_states"].shape == (2, 77, TEXT_DIM)
    emb = call["image_embeddings"]
    assert emb.shape == (2, 1, IMAGE_DIM) and torch.all(emb[0] == 0) and emb[1].abs().sum() > 0
    cond = call["image_latents"]
    assert cond.shape == (2, 4, FRAMES, h, w) and torch.equal(cond[0], cond[1])
    assert torch.equal(cond[0, :, 0], den.image_latent)
    for k in range(1, FRAMES):
        assert torch.all(cond[:, :, k] == k / (FRAMES - 1))
    assert call["fps"].tolist() == [FPS, FPS]
    assert int(call["timestep"]) == den.timesteps[0]


def test_without_guidance_there_is_no_cfg_batch(backbone, image):
    den = make_denoiser(backbone, image, guidance=1.0)
    calls, handle = capture_unet_calls(backbone.unet)
    try:
        den.predict_noise(torch.randn(video_shape(backbone)), den.timesteps[1], video=True)
    finally:
        handle.remove()
    (call,) = calls
    assert call["sample"].shape[0] == 1 and call["encoder_hidden_states"].shape[0] == 1
    assert call["image_embeddings"].abs().sum() > 0 and call["fps"].tolist() == [FPS]


def test_fps_and_image_both_reach_the_prediction(backbone, image):
    x = torch.randn(video_shape(backbone), generator=seeded_generator(1))
    t = make_denoiser(backbone, image).timesteps[1]
    base = make_denoiser(backbone, image).predict_noise(x, t, video=True)
    other_fps = make_denoiser(backbone, image, fps=FPS + 8).predict_noise(x, t, video=True)
    other_image = make_denoiser(backbone, image.transpose(Image.FLIP_LEFT_RIGHT)).predict_noise(x, t, video=True)
    assert not torch.allclose(base, other_fps) and not torch.allclose(base, other_image)


# Parameterisation ------------------------------------------------------------------------------------------------
def test_v_prediction_is_converted_to_epsilon(backbone, image):
    den = make_denoiser(backbone, image)
    assert den.prediction_type == "v_prediction"
    x = torch.randn(video_shape(backbone), generator=seeded_generator(2))
    for t in den.timesteps:
        v = den.model_output(x, t)
        a = den.alphas_cumprod[t]
        expected = torch.sqrt(a) * v + torch.sqrt(1 - a) * x
        torch.testing.assert_close(den.predict_noise(x, t, video=True), expected, rtol=0, atol=1e-6)


def test_epsilon_recovered_from_an_oracle_v_model(backbone, image):
    """A stand-in UNet that returns the true v of a known (x0, eps) pair: predict_noise must return eps."""
    from diffusers import DDIMScheduler

    den = make_denoiser(backbone, image, guidance=1.0)
    gen = seeded_generator(3)
    x0, eps = torch.randn(video_shape(backbone), generator=gen), torch.randn(video_shape(backbone), generator=gen)
    for prediction_type in ("v_prediction", "epsilon", "sample"):
        scheduler = DDIMScheduler.from_config(backbone.scheduler.config, prediction_type=prediction_type)
        t = den.timesteps[1]
        a = den.alphas_cumprod[t]
        x_t = add_noise(x0, eps, t, den.alphas_cumprod)
        truth = {"v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "epsilon": eps, "sample": x0}[prediction_type]
        oracle = lambda sample, timestep, **kwargs: (truth,)  # noqa: E731
        oracle_den = I2VGenXLDenoiser(oracle, scheduler, den.conditioning, guidance=1.0, frames=FRAMES,
                                      steps=STEPS, dtype=torch.float32, device=torch.device("cpu"))
        torch.testing.assert_close(oracle_den.predict_noise(x_t, t, video=True), eps, rtol=0, atol=1e-5)


def test_image_mode_is_refused_with_a_pointer_to_the_anchor(backbone, image):
    den = make_denoiser(backbone, image)
    h, w = video_shape(backbone)[-2:]
    with pytest.raises(ImageModeUnsupported, match="anchor"):
        den.predict_noise(torch.randn(1, 4, h, w), den.timesteps[0], video=False)
    settings = I4VGenSettings(prompt="a red boat", frames=FRAMES, steps=STEPS, candidates=2, ranker="none")
    noises = draw_noises(seeded_generator(0), frames=FRAMES, candidates=2, latent_height=h, latent_width=w)
    with pytest.raises(ImageModeUnsupported):
        run_i4vgen(den, settings, noises)  # no anchor= -> the candidate stage asks for image mode
    assert den.unet_calls == 0


# Our loop ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance, negative", [(6.0, "blurry, static"), (1.0, "")])
def test_plain_sampling_equals_the_diffusers_pipeline(model_dir, backbone, image, guidance, negative):
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if not hasattr(pipe.text_encoder, "text_model"):
        # transformers >= 5.6 flattened CLIPTextModel, but the pipeline's clip_skip path still reaches for
        # .text_model.final_layer_norm; an unregistered alias lets the reference run unchanged.
        object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    noise = torch.randn(video_shape(backbone), generator=seeded_generator(7))
    torch.manual_seed(11)  # the pipeline samples the VAE posterior from the global RNG
    reference = pipe(
        prompt="a red boat", image=image, height=HEIGHT, width=WIDTH, target_fps=FPS, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=guidance, negative_prompt=negative, latents=noise.clone(),
        output_type="latent",
    ).frames
    den = backbone.denoiser("a red boat", negative, guidance, STEPS, image, width=WIDTH, height=HEIGHT,
                            frames=FRAMES, fps=FPS, generator=seeded_generator(11))
    ours = den.denoise(None, noise, steps=STEPS, video=True, stage="plain")
    assert den.unet_calls == STEPS
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_partial_denoise_starts_from_the_strength_timestep(backbone, image):
    den = make_denoiser(backbone, image)
    gen = seeded_generator(4)
    x, noise = torch.randn(video_shape(backbone), generator=gen), torch.randn(video_shape(backbone), generator=gen)
    events: list = []
    calls, handle = capture_unet_calls(backbone.unet)
    try:
        out = den.denoise(x, noise, steps=2, video=True, stage="regeneration", callback=events.append)
    finally:
        handle.remove()
    start = den.timesteps[STEPS - 2]
    assert [e.timestep for e in events] == list(den.timesteps[STEPS - 2:]) and den.unet_calls == 2
    expected_start = add_noise(x, noise, start, den.alphas_cumprod)
    torch.testing.assert_close(calls[0]["sample"][:1], expected_start, rtol=0, atol=1e-6)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert den.denoise(x, noise, steps=0, video=True, stage="regeneration") is x and den.unet_calls == 2
    with pytest.raises(ValueError, match="full denoise"):
        den.denoise(None, noise, steps=2, video=True, stage="plain")


# I4VGen with the image as anchor ---------------------------------------------------------------------------------
def i4vgen_run(backbone, image, *, seed: int, steps: int = 5, regen_strength: float = 1.0):
    settings = I4VGenSettings(prompt="a red boat", negative_prompt="blurry", seed=seed, width=WIDTH, height=HEIGHT,
                              frames=FRAMES, steps=steps, guidance=6.0, candidates=1, ranker="none",
                              regen_strength=regen_strength)
    h, w = video_shape(backbone)[-2:]
    noises = draw_noises(seeded_generator(seed), frames=FRAMES, candidates=1, latent_height=h, latent_width=w)
    events: list = []
    result = run_i2v_i4vgen(backbone, settings, image, noises, fps=FPS, generator=seeded_generator(seed),
                            callback=events.append)
    return settings, result, events


@pytest.mark.parametrize("regen_strength", [1.0, 0.4])
def test_i4vgen_costs_k_plus_n_re_unet_calls(backbone, image, regen_strength):
    settings, result, events = i4vgen_run(backbone, image, seed=0, regen_strength=regen_strength)
    k, n_re = settings.nivsds_iterations, settings.regen_steps
    assert (k, n_re) == ((4, 5) if regen_strength == 1.0 else (4, 2))
    assert result.unet_calls == {"anchor": 0, "nivsds": k, "regeneration": n_re, "total": k + n_re}
    assert result.candidates is None and result.ranker == "anchor image"
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps.tolist()
    assert result.timesteps["nivsds"] == timesteps[:k]
    assert result.timesteps["regeneration"] == timesteps[settings.steps - n_re:]
    assert len([e for e in events if e.stage in ("ni-vsds", "regeneration")]) == k + n_re
    assert result.video.shape == video_shape(backbone) and torch.isfinite(result.video).all()


def test_i4vgen_is_deterministic_for_a_seed(backbone, image):
    _, first, _ = i4vgen_run(backbone, image, seed=3, steps=3)
    _, again, _ = i4vgen_run(backbone, image, seed=3, steps=3)
    _, other, _ = i4vgen_run(backbone, image, seed=4, steps=3)
    assert torch.equal(first.video, again.video) and torch.equal(first.nivsds, again.nivsds)
    assert not torch.allclose(first.video, other.video)


def test_encode_and_decode(backbone, image):
    latent = backbone.encode_image(image, WIDTH, HEIGHT, generator=seeded_generator(5))
    assert latent.shape == (4, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(latent, backbone.encode_image(image, WIDTH, HEIGHT, generator=seeded_generator(5)))
    mean = backbone.encode_image(image, WIDTH, HEIGHT, sample=False)
    assert torch.equal(mean, backbone.encode_image(image, WIDTH, HEIGHT, sample=False))
    assert not torch.equal(mean, latent)
    fitted = center_crop_wide(image, (WIDTH, HEIGHT))
    assert torch.equal(backbone.encode_image(fitted, sample=False), mean)  # default size: the image's own
    frames = backbone.decode_video(latent[None, :, None].repeat(1, 1, 3, 1, 1))
    assert len(frames) == 3 and all(f.size == (WIDTH, HEIGHT) and f.mode == "RGB" for f in frames)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(frames[2]))


def test_a_given_image_latent_is_the_condition_and_the_anchor(backbone, image):
    latent = backbone.encode_image(image, WIDTH, HEIGHT, sample=False)
    den = backbone.denoiser("a red boat", "", 6.0, STEPS, image, width=WIDTH, height=HEIGHT, frames=FRAMES,
                            image_latent=latent)
    assert torch.equal(den.image_latent, latent)
    assert torch.equal(den.conditioning.image_latents[1, :, 0], latent)
    with pytest.raises(ValueError, match="image_latent"):
        backbone.denoiser("a red boat", "", 6.0, STEPS, image, width=WIDTH * 2, height=HEIGHT, frames=FRAMES,
                          image_latent=latent)
    with pytest.raises(ValueError, match="video latents"):
        den.predict_noise(torch.zeros(1, 4, FRAMES + 1, HEIGHT // 8, WIDTH // 8), den.timesteps[0], video=True)


def test_cli_generate_with_the_i2vgen_xl_backbone(model_dir, image, tmp_path):
    import json

    from i4vgen_ext.standalone.cli import main

    src = tmp_path / "photo.png"
    image.save(src)
    out = tmp_path / "out"
    code = main(["generate", "--backbone", "i2vgen-xl", "--model", str(model_dir), "--anchor-image", str(src),
                 "--prompt", "a red boat", "--out", str(out), "--width", str(WIDTH), "--height", str(HEIGHT),
                 "--frames", str(FRAMES), "--steps", "5", "--seed", "3", "--quiet", "--save-latents"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["backbone"] == "i2vgen-xl" and run["ranker"] == "anchor image"
    assert run["settings"]["guidance"] == 9.0  # I2VGen-XL's own default when --guidance is not given
    k, n_re = int(5 * 0.6) + 1, 5
    assert run["unet_calls"] == {"anchor": 0, "nivsds": k, "regeneration": n_re, "total": k + n_re}
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == FRAMES and gif.size == (WIDTH, HEIGHT)
