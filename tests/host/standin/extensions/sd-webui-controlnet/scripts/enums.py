"""Stand-in of sd-webui-controlnet 1.1.455 ``scripts/enums.py``: ``ControlModelType`` (the members I4VGen meets;
``is_controlnet``), ``ControlMode``, ``HiResFixOption``, and ``InputMode`` (the real one is in ``batch_hijack.py``)."""
from enum import Enum


class ControlModelType(Enum):
    ControlNet = "ControlNet, Lvmin Zhang"
    T2I_Adapter = "T2I_Adapter, Chong Mou"
    AttentionInjection = "AttentionInjection, Lvmin Zhang"
    ControlLoRA = "ControlLoRA, Wu Hecong"
    ReVision = "ReVision, Stability"
    IPAdapter = "IPAdapter, Hu Ye"
    InstantID = "InstantID, Qixun Wang"
    SparseCtrl = "SparseCtrl, Yuwei Guo"
    ControlNetUnion = "ControlNetUnion, xinsir6"

    @property
    def is_controlnet(self) -> bool:
        return self in (ControlModelType.ControlNet, ControlModelType.ControlLoRA, ControlModelType.InstantID,
                        ControlModelType.ControlNetUnion)


class ControlMode(Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiResFixOption(Enum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


class InputMode(Enum):
    SIMPLE = "simple"
    BATCH = "batch"
    MERGE = "merge"
