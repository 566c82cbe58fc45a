"""Every test runs offline: no hub access, a throwaway HF cache."""
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="i4vgen-hf-"))
os.environ.setdefault("I4VGEN_CACHE", tempfile.mkdtemp(prefix="i4vgen-cache-"))

import torch  # noqa: E402

# Tiny models on 2 shared cores: one thread avoids oversubscription and is faster for these sizes.
torch.set_num_threads(1)
