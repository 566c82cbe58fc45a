"""Follows ``modules/rng.py`` ``ImageRNG(shape, seeds, subseeds, subseed_strength, seed_resize_from_h/w)``:
one CPU generator per seed; ``first()`` is the seeded noise, ``next()`` returns it first and then fresh draws
from the same generators (re-seeded by ``eta_noise_seed_delta`` after ``first``)."""
import torch
from modules import shared


def create_generator(seed):
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(seed, shape, generator=None):
    generator = generator if generator is not None else create_generator(seed)
    return torch.randn(shape, generator=generator)


def slerp(val, low, high):
    low_norm, high_norm = low / low.norm(), high / high.norm()
    omega = torch.acos((low_norm * high_norm).sum().clamp(-1, 1))
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so) * low + (torch.sin(val * omega) / so) * high


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.generators = [create_generator(seed) for seed in seeds]
        self.is_first = True

    def first(self):
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            noise = randn(seed, self.shape, generator=generator)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                noise = slerp(self.subseed_strength, noise, randn(subseed, self.shape))
            xs.append(noise)
        delta = shared.opts.eta_noise_seed_delta or 0
        if delta:
            self.generators = [create_generator(seed + delta) for seed in self.seeds]
        return torch.stack(xs).to(shared.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(shared.device)
