"""ConSPO reproducibility harness: the shared core of every RLVR objective, ConSPO itself, and the pipeline
(data, verifier, rollouts, trainer, evaluation, tables) that regenerates the paper's numbers.

The core names below are imported lazily, so that torch-free modules (data, verifier workers, metrics, tables) do
not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "BatchError": "conspo.batch",
    "RolloutBatch": "conspo.batch",
    "SequenceInfo": "conspo.batch",
    "Objective": "conspo.objective",
    "accumulate_gradients": "conspo.objective",
    "available_objectives": "conspo.objective",
    "build_objective": "conspo.objective",
    "register_objective": "conspo.objective",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'conspo' has no attribute {name!r}")
