"""DAPO (Yu et al. 2025): GRPO's clipped surrogate with clip-higher and a batch token-mean, no KL.

    l_{i,t} = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_low, 1 + eps_high) A_i)     eps_low 0.2, eps_high 0.28
    loss    = sum_i sum_t l_{i,t} / sum_i L_i                                           (token-mean over the batch)

DAPO's two other ingredients are not part of the loss and live in `conspo.shaping`, usable with any method:
dynamic sampling (`DynamicSampling`: drop groups whose rewards are all equal and sample again, with a cap on extra
rounds) and overlong reward shaping (`OverlongShaping`). The run config switches them on (`dynamic_sampling`,
`overlong_shaping`, docs/design.md); DAPO's recipe enables both.
"""

from __future__ import annotations

from dataclasses import dataclass

from conspo.objective import register_objective

from .grpo import GRPO


@register_objective("dapo")
@dataclass
class DAPO(GRPO):
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28  # clip-higher
    aggregation: str = "token-mean"
