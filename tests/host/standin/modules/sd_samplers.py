"""Follows ``modules/sd_samplers.py``: ``all_samplers_map``, ``find_sampler_config``, ``create_sampler(name, model)``
(constructs the sampler, sets ``.config``)."""
from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
samples_to_image_grid = None


def find_sampler_config(name):
    return all_samplers_map.get(name, None) if name is not None else all_samplers[0]


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f'bad sampler name: {name}'
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def fix_p_invalid_sampler_and_scheduler(p):
    pass
