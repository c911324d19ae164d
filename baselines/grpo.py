"""GRPO (Shao et al. 2024; ConSPO paper Eqs. 1, 3, 4).

    rho_{i,t} = pi_theta(o_{i,t}) / pi_old(o_{i,t})
    A_i       = (r_i - mean_g r) / (std_g r + eps)                                  (Eq. 1)
    l_{i,t}   = -min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps) A_i)          (Eq. 4)
    loss      = mean_i (1/L_i) sum_t l_{i,t}  [+ beta * KL(pi_theta || pi_ref), k3]  (Eq. 3, seq-mean-token-mean)

Defaults: eps = 0.2 on both sides; beta = 0 (the paper's reformulation drops the KL term; set kl_coef > 0 and the
trainer supplies ref_logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.losses import clipped_surrogate
from conspo.objective import check_parameter, register_objective
from conspo.surrogate import TokenSurrogate


@register_objective("grpo")
@dataclass
class GRPO(TokenSurrogate):
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check_parameter("clip_eps_low", self.clip_eps_low, 0 <= self.clip_eps_low <= 1, "in [0, 1]")
        check_parameter("clip_eps_high", self.clip_eps_high, self.clip_eps_high >= 0, ">= 0")

    def token_loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> Tensor:
        ratio = torch.exp(logprobs - old_logprobs)  # rho_{i,t}
        return clipped_surrogate(ratio, advantages, self.clip_eps_low, self.clip_eps_high)  # Eq. 4
