"""The standalone side on diffusers: the ``i4vgen`` command's jobs, their outputs, and ``i4vgen batch``."""
