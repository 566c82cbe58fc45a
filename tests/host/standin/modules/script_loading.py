"""Follows ``modules/script_loading.py`` ``load_module(path)`` (module named by the file's basename, not put in
``sys.modules``) and ``modules/scripts.py`` ``load_scripts`` (the extension root on ``sys.path`` while the file
loads, every ``Script`` subclass in the module registered)."""
import importlib.util
import os
import sys

from modules import scripts


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_extension_scripts(extension_dir):
    """Load ``<extension_dir>/scripts/*.py`` the way A1111 does; returns the loaded modules."""
    loaded = []
    folder = os.path.join(extension_dir, "scripts")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(folder, name)
        sys.path.insert(0, extension_dir)
        scripts.current_basedir = extension_dir
        try:
            module = load_module(path)
        finally:
            sys.path.remove(extension_dir)
            scripts.current_basedir = os.getcwd()
        for obj in module.__dict__.values():
            if isinstance(obj, type) and issubclass(obj, scripts.Script) and obj is not scripts.Script:
                scripts.scripts_data.append((obj, path))
        loaded.append(module)
    return loaded
