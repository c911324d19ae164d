"""GMPO (Geometric-Mean Policy Optimization, Zhao et al. 2025): maximise the geometric mean of the token ratios.

    d_{i,t}  = log pi_theta(o_{i,t}) - log pi_old(o_{i,t})
    c_{i,t}  = min(d, clip(d, -eps_low, eps_high))  if A_i > 0      (sign-aware clipping in log space:
             = max(d, clip(d, -eps_low, eps_high))  otherwise        PPO's min trick, written on log-ratios)
    ratio_i  = exp((1/L_i) sum_t c_{i,t})                             (geometric mean of the clipped ratios)
    loss     = mean_i (-A_i ratio_i)

Defaults: eps_low = eps_high = 0.4 (ratio range (e^-0.4, e^0.4)), GRPO's advantage, no KL.
The loss is per sequence and non-linear in the token log-ratios, so the sequence term is the mean clipped
log-ratio and the loss exponentiates it; `accumulate_gradients` keeps micro-batched gradients exact. On-policy
(ratio 1) its gradient is GRPO's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.batch import RolloutBatch, SequenceInfo
from conspo.losses import masked_sum
from conspo.objective import check_parameter, register_objective
from conspo.surrogate import GroupRelative


def sign_aware_log_clip(log_ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """sign(A) min(sign(A) d, sign(A) clip(d, -eps_low, eps_high)): only the side that would increase the objective is
    clipped, i.e. d <= eps_high for A > 0 and d >= -eps_low otherwise -- written as one clamp with per-row bounds."""
    positive, bound = advantages > 0, log_ratio.new_tensor  # bounds in the log-ratios' dtype
    upper = torch.where(positive, bound(eps_high), bound(torch.inf))
    lower = torch.where(positive, bound(-torch.inf), bound(-eps_low))
    return torch.clamp(log_ratio, min=lower, max=upper)


@register_objective("gmpo")
@dataclass
class GMPO(GroupRelative):
    clip_eps_low: float = 0.4  # in log space
    clip_eps_high: float = 0.4

    n_terms = 1

    def __post_init__(self):
        super().__post_init__()
        check_parameter("clip_eps_low", self.clip_eps_low, self.clip_eps_low >= 0, ">= 0 (in log space)")
        check_parameter("clip_eps_high", self.clip_eps_high, self.clip_eps_high >= 0, ">= 0 (in log space)")

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        mask = batch.response_mask
        log_ratio = logprobs - batch.old_logprobs
        advantages = batch.advantages[:, None].to(logprobs.dtype)
        clipped = sign_aware_log_clip(log_ratio, advantages, self.clip_eps_low, self.clip_eps_high)
        mean_clipped = masked_sum(clipped, mask) / mask.sum(-1).clamp_min(1).to(logprobs.dtype)
        return mean_clipped[:, None]  # log of the geometric-mean ratio

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        ratio = torch.exp(terms[:, 0])
        loss = (-info.advantages.to(ratio.dtype) * ratio).mean()
        return loss, {"policy_loss": float(loss.detach()), "geometric_ratio_mean": float(ratio.detach().mean())}
