"""Stand-in of crowsonkb/k-diffusion as A1111 1.10.1 uses it (``repositories/k-diffusion``): ``external`` and
``sampling`` with the two samplers the tests drive."""
from . import external, sampling  # noqa: F401
