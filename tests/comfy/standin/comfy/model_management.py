"""Follows ``comfy/model_management.py``: the interrupt flag (``interrupt_current_processing``,
``processing_interrupted``, ``throw_exception_if_processing_interrupted`` which clears it and raises
``InterruptProcessingException``), ``get_torch_device``, ``intermediate_device``."""
import threading

import torch


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


current_loaded_models = []


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """One patcher per model at a time (``LoadedModel``): a clone of a loaded model replaces it (its patches are
    undone, ``unpatch_model``) before the new one is patched in."""
    for patcher in models:
        for loaded in list(current_loaded_models):
            if loaded is patcher:
                continue
            if loaded.is_clone(patcher):
                loaded.unpatch_model()
                current_loaded_models.remove(loaded)
        if patcher not in current_loaded_models:
            patcher.patch_model()
            current_loaded_models.insert(0, patcher)
