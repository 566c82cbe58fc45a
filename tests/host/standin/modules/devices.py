"""Follows ``modules/devices.py``: ``device``, ``cpu``, dtypes, ``autocast``, ``without_autocast``,
``torch_gc``, ``test_for_nans``."""
import contextlib

import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
dtype = dtype_vae = dtype_unet = torch.float32
unet_needs_upcast = False
fp8 = False


def autocast(disable=False):
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()


def torch_gc():
    pass


class NansException(Exception):
    pass


def test_for_nans(x, where):
    if torch.isnan(x).all():
        raise NansException(f"A tensor with all NaNs was produced in {where}.")


def get_device_for(task):
    return device
