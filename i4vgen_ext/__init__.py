"""I4VGen: training-free video diffusion inference (anchor image -> static video -> NI-VSDS -> regeneration)."""
from .core.compose import RunNoises, RunResult, call_plan, plan_run, run_mode, seeded_noises
from .core.noise import Noises, draw_noises, seeded_generator
from .core.pipeline import I4VGenResult, run_i4vgen
from .core.settings import I4VGenSettings, SettingsError

__all__ = ["I4VGenSettings", "SettingsError", "RunNoises", "RunResult", "call_plan", "plan_run", "run_mode",
           "seeded_noises", "I4VGenResult", "run_i4vgen", "Noises", "draw_noises", "seeded_generator"]
__version__ = "0.1.0"
