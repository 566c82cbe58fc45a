"""Model backbones behind the ``Denoiser`` interface.

Nothing here imports diffusers at package import time (the WebUI's venv has no diffusers): import the submodule
you need, e.g. ``from i4vgen_ext.backbones.diffusers_backbone import DiffusersBackbone``.
"""
