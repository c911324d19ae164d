"""GRPO (paper Eq. 3): per token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), seq-mean-token-mean, optional KL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.objective import register_objective
from conspo.surrogate import TokenSurrogate


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """PPO's clipped surrogate per token, negated to a loss: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)."""
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return -torch.minimum(ratio * advantages, clipped * advantages)


@register_objective("grpo")
@dataclass
class GRPO(TokenSurrogate):
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2

    def token_loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> Tensor:
        ratio = torch.exp(logprobs - old_logprobs)  # rho_{i,t}
        return clipped_surrogate(ratio, advantages, self.clip_eps_low, self.clip_eps_high)  # Eq. 3
