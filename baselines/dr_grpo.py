"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO without its two biases.

    A_i  = r_i - mean_g r                                   (no division by std: no question-difficulty bias)
    loss = (1/N) sum_i (1/C) sum_t l_{i,t}                  (a constant C, not L_i: no response-length bias)

with l_{i,t} GRPO's clipped surrogate (eps 0.2) and no KL. C is the maximum response length of the run (Table 7:
8192; set `aggregation_constant` to the run's `rollout.max_new_tokens`, e.g. 4096 for Qwen3-4B-Base). TRL's
`loss_type="dr_grpo"` divides by the same constant (`max_completion_length`).
"""

from __future__ import annotations

from dataclasses import dataclass

from conspo.objective import register_objective

from .grpo import GRPO


@register_objective("dr_grpo")
@dataclass
class DrGRPO(GRPO):
    advantage_std: str = "none"
    aggregation: str = "seq-mean-token-sum-norm"
    aggregation_constant: float | None = 8192.0  # C = max response length (Table 7)
