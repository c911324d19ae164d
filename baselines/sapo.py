"""SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025): a smooth sigmoid gate instead of the hard clip.

    f_A(rho) = sigmoid(tau_A (rho - 1)) * 4 / tau_A,   tau_A = tau_pos if A > 0 else tau_neg
    l_{i,t}  = -f_A(rho_{i,t}) A_i
    loss     = mean_i (1/L_i) sum_t l_{i,t}                 (seq-mean-token-mean)

f_A(1) = 2 / tau_A and f_A'(1) = 1: on-policy SAPO has GRPO's gradient; off-policy the gate decays smoothly (faster
for negative advantages, tau_neg > tau_pos). Defaults tau_pos = 1.0, tau_neg = 1.05 (the paper's and TRL's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.objective import check_parameter, register_objective
from conspo.surrogate import TokenSurrogate


def soft_gate(ratio: Tensor, temperature: Tensor) -> Tensor:
    """f(rho) = sigmoid(tau (rho - 1)) * 4 / tau: value 2/tau and slope 1 at rho = 1."""
    return torch.sigmoid(temperature * (ratio - 1.0)) * 4.0 / temperature


@register_objective("sapo")
@dataclass
class SAPO(TokenSurrogate):
    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def __post_init__(self):
        super().__post_init__()
        check_parameter("tau_pos", self.tau_pos, self.tau_pos > 0, "> 0")
        check_parameter("tau_neg", self.tau_neg, self.tau_neg > 0, "> 0")

    def token_loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> Tensor:
        ratio = torch.exp(logprobs - old_logprobs)
        # built in the ratios' dtype (Python floats in torch.where would make float32 temperatures)
        temperature = torch.where(advantages > 0, ratio.new_tensor(self.tau_pos), ratio.new_tensor(self.tau_neg))
        return -soft_gate(ratio, temperature) * advantages
