"""The standalone side on diffusers: the ``i4vgen`` command's jobs (generate, refine, batch), their outputs and
video input."""
