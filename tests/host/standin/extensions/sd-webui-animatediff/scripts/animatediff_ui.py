"""Stand-in of sd-webui-animatediff ``scripts/animatediff_ui.py`` ``AnimateDiffProcess``: the same keyword
parameters and defaults (txt2img part), ``_check`` and ``set_p`` (``p.batch_size = batch_size if video_length <
batch_size else video_length``; ``video_length = p.batch_size`` when 0; ``overlap = batch_size // 4`` when -1;
``do_not_save_samples``) with its ControlNet wiring: an enabled unit without an image (or a batch unit without a
folder) takes AnimateDiff's ``video_path`` as its batch folder, batch units become ``animatediff_batch`` units, and
``fix_video_length`` cuts the video to the fewest control frames, which a batch modifier then also cuts to."""
from modules import shared
from scripts.animatediff_utils import get_controlnet_units


class AnimateDiffProcess:
    def __init__(self, model="mm_sd15_v3.safetensors", enable=False, video_length=0, fps=8, loop_number=0,
                 closed_loop='R-P', batch_size=16, stride=1, overlap=-1, format=["GIF", "PNG"], interp='Off',
                 interp_x=10, video_source=None, video_path='', mask_path='', freeinit_enable=False,
                 freeinit_filter="butterworth", freeinit_ds=0.25, freeinit_dt=0.25, freeinit_iters=3,
                 latent_power=1, latent_scale=32, last_frame=None, latent_power_last=1, latent_scale_last=32,
                 request_id='', is_i2i_batch=False, video_default=False, prompt_scheduler=None):
        self.model = model
        self.enable = enable
        self.video_length = video_length
        self.fps = fps
        self.loop_number = loop_number
        self.closed_loop = closed_loop
        self.batch_size = batch_size
        self.stride = stride
        self.overlap = overlap
        self.format = format
        self.interp = interp
        self.interp_x = interp_x
        self.video_source = video_source
        self.video_path = video_path
        self.mask_path = mask_path
        self.freeinit_enable = freeinit_enable
        self.freeinit_filter = freeinit_filter
        self.freeinit_ds = freeinit_ds
        self.freeinit_dt = freeinit_dt
        self.freeinit_iters = freeinit_iters
        self.latent_power = latent_power
        self.latent_scale = latent_scale
        self.last_frame = last_frame
        self.latent_power_last = latent_power_last
        self.latent_scale_last = latent_scale_last
        self.request_id = request_id
        self.video_default = video_default
        self.is_i2i_batch = is_i2i_batch
        self.prompt_scheduler = prompt_scheduler

    def get_dict(self, is_img2img):
        keys = ["model", "video_length", "fps", "loop_number", "closed_loop", "batch_size", "stride", "overlap",
                "interp", "interp_x", "freeinit_enable"]
        return ', '.join(f"{k}: {getattr(self, k)}" for k in keys)

    def _check(self):
        assert self.video_length >= 0 and self.fps > 0, "Video length and FPS should be positive."
        assert not {"GIF", "MP4", "WEBP", "WEBM", "PNG"}.isdisjoint(self.format), "At least one saving format should be selected."

    def set_p(self, p):
        self._check()
        if self.video_length < self.batch_size:
            p.batch_size = self.batch_size
        else:
            p.batch_size = self.video_length
        if self.video_length == 0:
            self.video_length = p.batch_size
            self.video_default = True
        if self.overlap == -1:
            self.overlap = self.batch_size // 4
        if "PNG" not in self.format:
            p.do_not_save_samples = True
        cn_units = get_controlnet_units(p)
        min_batch_in_cn = -1
        for cn_unit in cn_units:
            if not cn_unit.enabled:
                continue
            if (cn_unit.input_mode.name == 'SIMPLE' and cn_unit.image is None) or \
               (cn_unit.input_mode.name == 'BATCH' and not cn_unit.batch_images):
                cn_unit.input_mode = cn_unit.input_mode.__class__.BATCH
                cn_unit.batch_images = self.video_path
            cn_unit_batch_params = cn_unit.batch_images.split('\n')
            if cn_unit.input_mode.name == 'BATCH':
                cn_unit.animatediff_batch = True
                cn_unit_batch_num = len(shared.listfiles(cn_unit_batch_params[0]))
                if min_batch_in_cn == -1 or cn_unit_batch_num < min_batch_in_cn:
                    min_batch_in_cn = cn_unit_batch_num
        if min_batch_in_cn != -1:
            self.fix_video_length(p, min_batch_in_cn)

            def cn_batch_modifler(batch_image_files, p):
                return batch_image_files[:self.video_length]
            for cn_unit in cn_units:
                if cn_unit.input_mode.name == 'BATCH':
                    cn_unit.batch_modifiers = getattr(cn_unit, "batch_modifiers", []) + [cn_batch_modifler]

    def fix_video_length(self, p, min_batch_in_cn):
        if self.video_length > min_batch_in_cn:
            self.video_length = min_batch_in_cn
            p.batch_size = min_batch_in_cn
        if self.batch_size > min_batch_in_cn:
            self.batch_size = min_batch_in_cn
        if self.video_default:
            self.video_length = min_batch_in_cn
            p.batch_size = min_batch_in_cn
