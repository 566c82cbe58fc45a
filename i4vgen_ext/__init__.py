"""I4VGen: training-free video diffusion inference (anchor image -> static video -> NI-VSDS -> regeneration)."""
from .settings import I4VGenSettings, SettingsError
from .pipeline import I4VGenResult, run_i4vgen
from .noise import Noises, draw_noises, seeded_generator

__all__ = ["I4VGenSettings", "SettingsError", "I4VGenResult", "run_i4vgen", "Noises", "draw_noises", "seeded_generator"]
__version__ = "0.1.0"
