"""The example workflows: the API one names every input the nodes declare, with values the settings table accepts;
the UI one (what ComfyUI's canvas loads) is the same graph: the same nodes, links and widget values."""
from __future__ import annotations

import json

from i4vgen_ext.comfy.inputs import build_settings
from i4vgen_ext.comfy.nodes import NODE_CLASS_MAPPINGS

from .conftest import REPO

API = json.loads((REPO / "examples" / "i4vgen_animatediff_api.json").read_text())
UI = json.loads((REPO / "examples" / "i4vgen_animatediff.json").read_text())


def test_the_api_example_gives_every_required_input_of_our_nodes_and_valid_settings():
    for node in API.values():
        cls = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is None:
            continue
        assert set(cls.INPUT_TYPES()["required"]) <= set(node["inputs"]), node["class_type"]
    sampler = next(n["inputs"] for n in API.values() if n["class_type"] == "I4VGenSamplerAnimateDiff")
    widgets = {k: v for k, v in sampler.items() if not isinstance(v, list) and k != "prompt"}
    assert NODE_CLASS_MAPPINGS["I4VGenSamplerAnimateDiff"].VALIDATE_INPUTS(**widgets) is True
    build_settings(widgets, frames=16)


def test_the_ui_example_is_the_api_example():
    nodes = {str(n["id"]): n for n in UI["nodes"]}
    assert {k: n["type"] for k, n in nodes.items()} == {k: n["class_type"] for k, n in API.items()}
    ui_links = {(str(dst), name["name"]): [str(src), slot]
                for link_id, src, slot, dst, dst_slot, _ in UI["links"]
                for name in [nodes[str(dst)]["inputs"][dst_slot]] if name["link"] == link_id}
    api_links = {(key, name): value for key, node in API.items() for name, value in node["inputs"].items()
                 if isinstance(value, list)}
    assert ui_links == api_links
    sampler = NODE_CLASS_MAPPINGS["I4VGenSamplerAnimateDiff"]
    declared = {**sampler.INPUT_TYPES()["required"], **sampler.INPUT_TYPES()["optional"]}
    key = next(k for k, n in API.items() if n["class_type"] == "I4VGenSamplerAnimateDiff")
    expected = []
    for name, (kind, *options) in declared.items():
        if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            expected.append(API[key]["inputs"][name])
            if options and options[0].get("control_after_generate"):
                expected.append("fixed")
    assert nodes[key]["widgets_values"] == expected
