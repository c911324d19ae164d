"""Baseline objectives of the ConSPO paper, one module each, registered in conspo's objective registry on import."""

from . import cispo, dapo, disco, dr_grpo, gmpo, grpo, sapo  # noqa: F401
