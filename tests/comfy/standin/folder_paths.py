"""Follows ComfyUI ``folder_paths.py``: ``models_dir``, ``folder_names_and_paths`` (name -> ([paths], extensions)),
``add_model_folder_path``, ``get_folder_paths``, ``get_filename_list`` (recursive, filtered by extension; an empty set
lists every file), ``get_full_path`` (a listed relative name -> the first existing file, never outside a folder)."""
from __future__ import annotations

import os

base_path = os.environ.get("I4VGEN_STANDIN_COMFY_BASE", os.path.dirname(os.path.abspath(__file__)))
models_dir = os.path.join(base_path, "models")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths = {"checkpoints": ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)}


def set_base(path: str) -> None:
    """Test helper: point the models folder somewhere else (ComfyUI's ``--base-directory``)."""
    global base_path, models_dir
    base_path, models_dir = path, os.path.join(path, "models")


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list:
    return folder_names_and_paths[folder_name][0][:]


def filter_files_extensions(files, extensions) -> list:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_filename_list(folder_name: str) -> list:
    paths, extensions = folder_names_and_paths[folder_name]
    found = set()
    for base in paths:
        for root, _dirs, files in os.walk(base, followlinks=True):
            for name in files:
                found.add(os.path.relpath(os.path.join(root, name), base))
    return filter_files_extensions(found, extensions)


def get_full_path(folder_name: str, filename: str):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for base in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(base, filename)
        if os.path.isfile(full_path):
            return full_path
    return None
