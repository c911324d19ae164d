"""Baseline objectives of the ConSPO paper, one module each, registered in conspo's objective registry on import."""

from . import cispo, dapo, disco, dr_grpo, gmpo, grpo, sapo  # noqa: F401
from . import cepo  # noqa: F401  (beyond the paper: docs/beyond_paper.md)
from . import clipo  # noqa: F401  (beyond the paper: docs/beyond_paper.md)
