"""Follows ``modules/infotext_utils.py``: ``quote``/``unquote``, ``re_param``, ``parse_generation_parameters``
(prompt lines, "Negative prompt:", the last line's ``key: value`` pairs, quoted values unquoted), ``PasteField``
and the UI paste (``connect_paste`` -> ``paste_func``: parse, ``infotext_pasted_callback``, then per field
``key(params)`` for callables or ``params[key]``, a ``gr.update`` passed through as it is, anything else converted
to the type of the component's ``.value``)."""
import json
import re

import gradio as gr
from modules import script_callbacks

type_of_gr_update = type(gr.update())

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x, skip_fields=None):
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    return res


def paste_func(paste_fields, prompt):
    """The body of ``connect_paste``'s click handler; returns the new value per field (None = unchanged)."""
    params = parse_generation_parameters(prompt)
    script_callbacks.infotext_pasted_callback(prompt, params)
    res = []
    for output, key in paste_fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            res.append(None)
            continue
        if isinstance(v, type_of_gr_update):
            res.append(v)
            continue
        try:
            valtype = type(output.value)
            if valtype == bool and v == "False":
                val = False
            elif valtype == int:
                val = float(v)
            else:
                val = valtype(v)
            res.append(val)
        except Exception:
            res.append(None)
    return res
