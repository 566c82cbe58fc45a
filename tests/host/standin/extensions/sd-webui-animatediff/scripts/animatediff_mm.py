"""Stand-in of sd-webui-animatediff ``scripts/animatediff_mm.py`` ``AnimateDiffMM``: class flag ``mm_injected``,
``set_ad_params``, ``load`` (RuntimeError for an unknown model), ``inject`` (restore first if injected; SDXL
assert; v2 -> middle_block.insert(-1); input_blocks[1,2,4,5,7,8,10,11].append; output_blocks 0..11 insert(-1) when
idx % 3 == 2 and idx != 11 else append; ``_set_ddim_alpha`` replacing both alphas attributes with linear betas
0.00085..0.012, or for AnimateDiff-XL scaled-linear betas 0.00085..0.020), ``restore`` (the exact inverse, then unload under lowvram)."""
import torch
from motion_module import MotionModuleType, MotionWrapper

MODELS = {  # file name -> type, standing in for the files in the model folder
    "mm_sd15_v3.safetensors": MotionModuleType.AnimateDiffV3,
    "mm_sd15_v2.ckpt": MotionModuleType.AnimateDiffV2,
    "mm_sdxl_v10_beta.ckpt": MotionModuleType.AnimateDiffXL,
    "hsxl_temporal_layers.f16.safetensors": MotionModuleType.HotShotXL,
}
CACHE = {}


class AnimateDiffMM:
    mm_injected = False

    def __init__(self):
        self.mm = None
        self.script_dir = None
        self.ad_params = None
        self.prev_alpha_cumprod = None
        self.prev_alpha_cumprod_original = None
        self.inject_count = 0
        self.restore_count = 0

    def set_script_dir(self, script_dir):
        self.script_dir = script_dir

    def set_ad_params(self, ad_params):
        self.ad_params = ad_params

    def load(self, model_name):
        if model_name not in MODELS:
            raise RuntimeError("Please download models manually.")
        if self.mm is None or self.mm.mm_name != model_name:
            if model_name not in CACHE:
                with torch.random.fork_rng():
                    torch.manual_seed(1)
                    CACHE[model_name] = MotionWrapper(model_name, "0" * 64, MODELS[model_name])
            self.mm = CACHE[model_name]
        self.mm.eval()

    def inject(self, sd_model, model_name="mm_sd15_v3.safetensors"):
        if AnimateDiffMM.mm_injected:
            self.restore(sd_model)
        unet = sd_model.model.diffusion_model
        self.load(model_name)
        inject_sdxl = sd_model.is_sdxl or self.mm.is_xl
        assert sd_model.is_sdxl == self.mm.is_xl, "Motion module incompatible with SD."
        if self.mm.is_v2:
            unet.middle_block.insert(-1, self.mm.mid_block.motion_modules[0])
        for mm_idx, unet_idx in enumerate([1, 2, 4, 5, 7, 8, 10, 11]):
            if inject_sdxl and mm_idx >= 6:
                break
            unet.input_blocks[unet_idx].append(self.mm.down_blocks[mm_idx // 2].motion_modules[mm_idx % 2])
        for unet_idx in range(12):
            if inject_sdxl and unet_idx >= 9:
                break
            mm_inject = self.mm.up_blocks[unet_idx // 3].motion_modules[unet_idx % 3]
            if unet_idx % 3 == 2 and unet_idx != (8 if self.mm.is_xl else 11):
                unet.output_blocks[unet_idx].insert(-1, mm_inject)
            else:
                unet.output_blocks[unet_idx].append(mm_inject)
        self._set_ddim_alpha(sd_model)
        AnimateDiffMM.mm_injected = True
        self.inject_count += 1

    def restore(self, sd_model):
        if not AnimateDiffMM.mm_injected:
            return
        inject_sdxl = sd_model.is_sdxl or self.mm.is_xl
        self._restore_ddim_alpha(sd_model)
        unet = sd_model.model.diffusion_model
        for unet_idx in [1, 2, 4, 5, 7, 8, 10, 11]:
            if inject_sdxl and unet_idx >= 9:
                break
            unet.input_blocks[unet_idx].pop(-1)
        for unet_idx in range(12):
            if inject_sdxl and unet_idx >= 9:
                break
            if unet_idx % 3 == 2 and unet_idx != (8 if self.mm.is_xl else 11):
                unet.output_blocks[unet_idx].pop(-2)
            else:
                unet.output_blocks[unet_idx].pop(-1)
        if self.mm.is_v2:
            unet.middle_block.pop(-2)
        AnimateDiffMM.mm_injected = False
        self.restore_count += 1

    def _set_ddim_alpha(self, sd_model):
        if self.mm.is_adxl:
            betas = torch.linspace(0.00085 ** 0.5, 0.020 ** 0.5, 1000, dtype=torch.float32) ** 2
        else:
            betas = torch.linspace(0.00085, 0.012, 1000 if sd_model.is_sdxl else sd_model.num_timesteps,
                                   dtype=torch.float32)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.prev_alpha_cumprod = sd_model.alphas_cumprod
        self.prev_alpha_cumprod_original = sd_model.alphas_cumprod_original
        sd_model.alphas_cumprod = alphas_cumprod
        sd_model.alphas_cumprod_original = alphas_cumprod

    def _restore_ddim_alpha(self, sd_model):
        sd_model.alphas_cumprod = self.prev_alpha_cumprod
        sd_model.alphas_cumprod_original = self.prev_alpha_cumprod_original
        self.prev_alpha_cumprod = None
        self.prev_alpha_cumprod_original = None


mm_animatediff = AnimateDiffMM()
