"""The ComfyUI adapter: I4VGen's nodes over AnimateDiff-Evolved (docs/comfyui.md). The host is reached only through
``shim``; importing this package never needs ComfyUI."""
