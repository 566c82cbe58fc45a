"""I4VGen: training-free video diffusion inference (anchor image -> static video -> NI-VSDS -> regeneration)."""
from .core.settings import I4VGenSettings, SettingsError
from .core.pipeline import I4VGenResult, run_i4vgen
from .core.noise import Noises, draw_noises, seeded_generator

__all__ = ["I4VGenSettings", "SettingsError", "I4VGenResult", "run_i4vgen", "Noises", "draw_noises", "seeded_generator"]
__version__ = "0.1.0"
