"""CISPO (MiniMax-M1, 2025, Eqs. 4-5): REINFORCE with a clipped, stop-gradient importance-sampling weight.

    w_{i,t} = sg(clip(rho_{i,t}, lower, upper))
    l_{i,t} = -w_{i,t} A_i log pi_theta(o_{i,t})            (every token keeps its gradient, only its weight is capped)
    loss    = sum_i sum_t l_{i,t} / sum_i L_i               (token-mean over the batch)

The bound is a config choice because the sources parametrise it differently:
- `ratio_bound="relative"` (MiniMax-M1 Eq. 5, verl): [1 - eps_low, 1 + eps_high]; eps_low = None is the paper's
  "no lower bound" (eps_low set large), the paper tunes only eps_high.
- `ratio_bound="absolute"` (TRL `loss_type="cispo"`): [0, eps_high], the weight capped at eps_high itself; TRL
  recommends eps_high = 5.0 (ScaleRL's eps_max); `clip_eps_low` is ignored.
Default: relative, no lower bound, eps_high = 4.0, i.e. the weight is capped at 5.0 -- the paper's form with the
one published cap value (MiniMax-M1 does not publish its eps_high), so both parametrisations give the same weights.
verl's actor default eps 0.2/0.2 would turn CISPO into a tight two-sided clip the paper explicitly avoids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.objective import check_parameter, register_objective
from conspo.surrogate import TokenSurrogate

BOUNDS = ("relative", "absolute")


@register_objective("cispo")
@dataclass
class CISPO(TokenSurrogate):
    ratio_bound: str = "relative"
    clip_eps_low: float | None = None  # None: no lower bound on the weight (MiniMax-M1)
    clip_eps_high: float = 4.0  # relative: weight <= 1 + eps_high = 5.0
    aggregation: str = "token-mean"

    def __post_init__(self):
        super().__post_init__()
        check_parameter("ratio_bound", self.ratio_bound, self.ratio_bound in BOUNDS, f"one of {', '.join(BOUNDS)}")
        low, high = self.clip_eps_low, self.clip_eps_high
        check_parameter("clip_eps_low", low, low is None or 0 <= low <= 1, "null (no lower bound) or in [0, 1]")
        absolute = self.ratio_bound == "absolute"
        check_parameter("clip_eps_high", high, high > 0 if absolute else high >= 0,
                        "> 0 (the weight's cap)" if absolute else ">= 0")

    def weight_bounds(self) -> tuple[float | None, float]:
        if self.ratio_bound == "absolute":
            return None, self.clip_eps_high
        lower = None if self.clip_eps_low is None else 1.0 - self.clip_eps_low
        return lower, 1.0 + self.clip_eps_high

    def token_loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> Tensor:
        lower, upper = self.weight_bounds()
        ratio = torch.exp(logprobs - old_logprobs).detach()  # sg(rho): the weight carries no gradient
        weight = torch.clamp(ratio, min=lower, max=upper)  # Eq. 5
        return -weight * advantages * logprobs  # Eq. 4
