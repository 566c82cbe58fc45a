"""ComfyUI entry point: ComfyUI imports ``custom_nodes/<this clone>/__init__.py`` and reads NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS. The nodes live in ``i4vgen_ext.comfy`` (the same package the A1111 extension and the CLI
use), imported from this clone."""
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from i4vgen_ext.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, setup  # noqa: E402

try:
    setup()
except ImportError:  # imported outside ComfyUI (a test run collecting this folder as a package): nothing to register
    pass

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
