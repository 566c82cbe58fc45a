"""Follows ``comfy/model_patcher.py``: ``ModelPatcher`` over a shared ``BaseModel`` (``clone`` shares the model and
copies object patches, model_options, attachments, additional models, wrappers and injections; ``add_object_patch``,
``get_model_object`` honouring object patches, ``patch_model`` sets the object patches on the shared model and
injects, ``unpatch_model`` ejects and restores them, ``pre_run``, ``cleanup``), ``create_model_options_clone``."""
from __future__ import annotations

import copy

import comfy.patcher_extension


def create_model_options_clone(orig_model_options: dict):
    return comfy.patcher_extension.copy_nested_dicts(orig_model_options)


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device, self.size = load_device, offload_device, size
        self.weight_inplace_update = weight_inplace_update
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.attachments = {}
        self.additional_models = {}
        self.wrappers = {}
        self.callbacks = {}
        self.injections = {}
        self.is_injected = False
        self.skip_injection = False
        self.parent = None

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.weight_inplace_update)
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        n.attachments = {k: (v.on_model_patcher_clone() if hasattr(v, "on_model_patcher_clone") else v)
                         for k, v in self.attachments.items()}
        for k, c in self.additional_models.items():
            n.additional_models[k] = [x.clone() for x in c]
        for k, w in self.wrappers.items():
            n.wrappers[k] = {k1: w1.copy() for k1, w1 in w.items()}
        n.is_injected = self.is_injected
        for k, i in self.injections.items():
            n.injections[k] = i.copy()
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return getattr(self.model, name)

    def model_dtype(self):
        return self.model.get_dtype()

    # attachments, injections, additional models, wrappers
    def set_attachments(self, key, attachment):
        self.attachments[key] = attachment

    def get_attachment(self, key):
        return self.attachments.get(key, None)

    def set_injections(self, key, injections):
        self.injections[key] = injections

    def set_additional_models(self, key, models):
        self.additional_models[key] = models

    def get_additional_models_with_key(self, key):
        return self.additional_models.get(key, [])

    def get_nested_additional_models(self):
        return [m for models in self.additional_models.values() for m in models]

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    # loading
    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for key, value in self.object_patches.items():
            if key not in self.object_patches_backup:
                self.object_patches_backup[key] = getattr(self.model, key)
            setattr(self.model, key, value)
        self.inject_model()
        self.model.current_patcher = self
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        self.eject_model()
        for key, value in self.object_patches_backup.items():
            setattr(self.model, key, value)
        self.object_patches_backup.clear()
        if getattr(self.model, "current_patcher", None) is self:
            self.model.current_patcher = None

    def inject_model(self):
        if self.is_injected or self.skip_injection:
            return
        for injections in self.injections.values():
            for inj in injections:
                inj.inject(self)
                self.is_injected = True

    def eject_model(self):
        if not self.is_injected:
            return
        for injections in self.injections.values():
            for inj in injections:
                inj.eject(self)
        self.is_injected = False

    def pre_run(self):
        pass

    def cleanup(self):
        pass
