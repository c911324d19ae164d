"""ConSPO reproducibility harness: the shared core of every RLVR objective, ConSPO itself, and the pipeline
(data, verifier, rollouts, trainer, evaluation, tables) that regenerates the paper's numbers."""

from .batch import BatchError, RolloutBatch, SequenceInfo
from .objective import Objective, accumulate_gradients, available_objectives, build_objective, register_objective

__all__ = [
    "BatchError",
    "Objective",
    "RolloutBatch",
    "SequenceInfo",
    "accumulate_gradients",
    "available_objectives",
    "build_objective",
    "register_objective",
]
