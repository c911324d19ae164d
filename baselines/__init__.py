"""Baseline objectives of the ConSPO paper, one module each, registered in conspo's objective registry on import."""

from . import grpo  # noqa: F401
