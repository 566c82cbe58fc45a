"""Follows ``modules/extra_networks.py`` ``parse_prompts`` (``<name:args>`` tags stripped, the first prompt's
tags are the batch's networks) and ``activate(p, extra_network_data)``. The stand-in LoRA sets a global strength
that the tiny UNet adds (like A1111's lazily merged LoRA weights, it stays active until the next activate)."""
import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")
active_lora = {}  # name -> unet multiplier
activations = []  # every activate() call's lora dict, for tests


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res = []
    extra_data = None
    for prompt in prompts:
        updated_prompt, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated_prompt)
    return res, extra_data


def activate(p, extra_network_data):
    active_lora.clear()
    for params in (extra_network_data or {}).get("lora", []):
        name = params.items[0]
        weight = float(params.items[1]) if len(params.items) > 1 else 1.0
        active_lora[name] = weight
    activations.append(dict(active_lora))
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                               subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    pass
