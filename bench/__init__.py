"""The speed and memory benchmark: I4VGen against plain AnimateDiff and FreeInit on one model (``compare.py``)."""
