"""Follows ``modules/sd_unet.py``: ``current_unet`` is None unless an alternative UNet (TensorRT, ...) is active."""
current_unet = None


def apply_unet(option=None):
    pass
