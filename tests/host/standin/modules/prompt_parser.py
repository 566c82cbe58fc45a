"""Follows ``modules/prompt_parser.py``: ``SdConditioning``, ``ScheduledPromptConditioning``,
``ComposableScheduledPromptConditioning``, ``MulticondLearnedConditioning(shape, batch)``,
``get_learned_conditioning``, ``get_multicond_learned_conditioning``, ``reconstruct_cond_batch``,
``reconstruct_multicond_batch`` (no prompt editing or AND parsing: one schedule entry per prompt); SDXL's dict
conds are stacked per key."""
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, 'is_negative_prompt', False)
        self.width = width or getattr(copy_from, 'width', None)
        self.height = height or getattr(copy_from, 'height', None)


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    cache = {}
    res = []
    for prompt in prompts:
        if prompt not in cache:
            learned = model.get_learned_conditioning([prompt])
            cond = {k: v[0] for k, v in learned.items()} if isinstance(learned, dict) else learned[0]
            cache[prompt] = [ScheduledPromptConditioning(steps, cond)]
        res.append(cache[prompt])
    return res


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    learned = get_learned_conditioning(model, prompts, steps, hires_steps, use_old_scheduling)
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=[[ComposableScheduledPromptConditioning(s, 1.0)] for s in learned])


def _pick(schedules, current_step):
    for entry in schedules:
        if current_step <= entry.end_at_step:
            return entry.cond
    return schedules[0].cond


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def stack_conds(conds):
    """Tensors stacked; SDXL's dict conds stacked per key into a ``DictWithShape``."""
    if isinstance(conds[0], dict):
        return DictWithShape({k: torch.stack([c[k] for c in conds]) for k in conds[0]})
    return torch.stack(conds)


def reconstruct_cond_batch(c, current_step):
    return stack_conds([_pick(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(_pick(composable.schedules, current_step))
        conds_list.append(conds_for_batch)
    return conds_list, stack_conds(tensors)
