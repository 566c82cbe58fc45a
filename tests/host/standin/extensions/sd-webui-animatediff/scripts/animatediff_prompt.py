"""Stand-in of sd-webui-animatediff ``scripts/animatediff_prompt.py`` ``AnimateDiffPromptSchedule``: prompt travel.
``parse_prompt`` turns ``head / N: prompt / tail`` lines into one prompt per frame (``p.prompt = prompt_list *
p.n_iter``) and a ``prompt_map`` of the key frames; ``multi_cond`` gives each frame its key frame's cond or the slerp
between the two key frames around it."""
import re

import torch


class AnimateDiffPromptSchedule:
    def __init__(self, p, ad_params):
        self.prompt_map = None
        self.parse_prompt(p)

    def parse_prompt(self, p):
        if type(p.prompt) is not str:
            return
        data = {'head_prompts': [], 'mapp_prompts': {}, 'tail_prompts': []}
        mode = 'head'
        for line in p.prompt.strip().split('\n'):
            if mode == 'head':
                if re.match(r'^\d+:', line):
                    mode = 'mapp'
                else:
                    data['head_prompts'].append(line)
            if mode == 'mapp':
                match = re.match(r'^(\d+): (.+)$', line)
                if match:
                    frame, prompt = match.groups()
                    data['mapp_prompts'][int(frame)] = prompt
                else:
                    mode = 'tail'
            if mode == 'tail':
                data['tail_prompts'].append(line)
        if data['mapp_prompts']:
            self.prompt_map = {}
            prompt_list, last_frame, current_prompt = [], 0, ''
            for frame, prompt in data['mapp_prompts'].items():
                prompt_list += [current_prompt for _ in range(last_frame, frame)]
                last_frame = frame
                current_prompt = f"{', '.join(data['head_prompts'])}, {prompt}, {', '.join(data['tail_prompts'])}"
                self.prompt_map[frame] = current_prompt
            prompt_list += [current_prompt for _ in range(last_frame, p.batch_size)]
            assert len(prompt_list) == p.batch_size, f"prompt_list length {len(prompt_list)} != batch_size {p.batch_size}"
            p.prompt = prompt_list * p.n_iter

    def single_cond(self, center_frame, video_length, cond, closed_loop=False):
        keys = list(self.prompt_map.keys())
        key_prev, key_next = (keys[-1], keys[0]) if closed_loop else (keys[0], keys[-1])
        for key in keys:
            if key > center_frame:
                key_next = key
                break
            key_prev = key
        dist_prev = center_frame - key_prev
        if dist_prev < 0:
            dist_prev += video_length
        dist_next = key_next - center_frame
        if dist_next < 0:
            dist_next += video_length
        if key_prev == key_next or dist_prev + dist_next == 0:
            return cond[key_prev]
        return self.slerp(cond[key_prev], cond[key_next], dist_prev / (dist_prev + dist_next))

    def multi_cond(self, cond, closed_loop=False):
        if self.prompt_map is None:
            return cond
        return torch.stack([self.single_cond(i, cond.shape[0], cond, closed_loop)
                            for i in range(cond.shape[0])]).to(cond.dtype).to(cond.device)

    @staticmethod
    def slerp(v0, v1, t, DOT_THRESHOLD=0.9995):
        u0, u1 = v0 / v0.norm(), v1 / v1.norm()
        dot = (u0 * u1).sum()
        if dot.abs() > DOT_THRESHOLD:
            return (1.0 - t) * v0 + t * v1
        omega = dot.acos()
        return (((1.0 - t) * omega).sin() * v0 + (t * omega).sin() * v1) / omega.sin()
