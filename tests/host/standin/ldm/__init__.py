"""Stand-in of the ``ldm`` package A1111 1.10.1 imports from ``repositories/stable-diffusion-stability-ai``
(Stability-AI/stablediffusion): only what the tiny model and A1111's attention optimizations touch."""
