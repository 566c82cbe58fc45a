"""Every test runs offline: no hub access, a throwaway HF cache and i4vgen cache (removed when the run ends)."""
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

_THROWAWAY = []
for _name, _prefix in (("HF_HOME", "i4vgen-hf-"), ("I4VGEN_CACHE", "i4vgen-cache-")):
    if not os.environ.get(_name):  # a caller's (or a parent pytest's) folder is used as it is, and kept
        os.environ[_name] = tempfile.mkdtemp(prefix=_prefix)
        _THROWAWAY.append(os.environ[_name])

import torch  # noqa: E402

# Tiny models on 2 shared cores: one thread avoids oversubscription and is faster for these sizes.
torch.set_num_threads(1)


def pytest_unconfigure(config):
    for folder in _THROWAWAY:
        shutil.rmtree(folder, ignore_errors=True)
