"""Stand-in of sd-webui-animatediff ``scripts/animatediff_output.py`` ``AnimateDiffOutput.output``: groups
``res.images`` per video (stride ``max(video_length, batch_size)``, ``video_length`` frames each, stopping at
``len(res.all_seeds)``), saves a GIF with the infotext, then replaces ``res.images`` with the video paths (UI) or
base64 videos (+ frames with "Frame") under the API."""
import base64
import os
import tempfile


class AnimateDiffOutput:
    def output(self, p, res, params):
        video_paths = []
        frame_list = []
        output_dir = os.path.join(p.outpath_samples or tempfile.gettempdir(), "AnimateDiff")
        os.makedirs(output_dir, exist_ok=True)
        step = params.video_length if params.video_length > params.batch_size else params.batch_size
        for i in range(res.index_of_first_image, len(res.images), step):
            if i - res.index_of_first_image >= len(res.all_seeds):
                break
            frame_list = [image.copy() for image in res.images[i:i + params.video_length]]
            path = os.path.join(output_dir, f"{len(os.listdir(output_dir)):05}-{res.all_seeds[i - res.index_of_first_image]}.gif")
            frame_list[0].save(path, save_all=True, append_images=frame_list[1:], duration=1000 / params.fps,
                               loop=params.loop_number, comment=res.infotexts[i])
            video_paths.append(path)
        if not video_paths:
            return
        if p.is_api:
            encoded = [base64.b64encode(open(v, "rb").read()).decode() for v in video_paths]
            res.images = encoded + (frame_list if 'Frame' in params.format else [])
        else:
            res.images = video_paths
