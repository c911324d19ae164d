"""DisCO (Li et al. 2025, "Discriminative Constrained Optimization"), log-likelihood score variant.

    s_i     = (1/L_i) sum_t log pi_theta(o_{i,t})                                   (likelihood score)
    J(q)    = mean_{i in pos} s_i - tau log sum_{j in neg} exp(s_j / tau)           (0 for degenerate groups)
    KL      = sum_{i,t} k(o_{i,t}) / sum_i L_i      estimate of KL(pi_old || pi_theta) on the batch's tokens
    loss    = -mean_q J(q) + (beta / 2) max(KL - delta, 0)^2                        (squared-hinge constraint)

Defaults tau = 10, delta = 1e-4, beta = 1e3, no clipping, no reference model. The hinge carries the factor 1/2 so
that its gradient is beta [KL - delta]_+ grad KL, the update of the released DisCO code (and of METHODS.md); the
penalty of the paper, beta [KL - delta]_+^2, would double it. The KL estimator defaults to k1, -log r with
r = pi_theta / pi_old on samples of pi_old: every released DisCO run script (Optimization-AI/DisCO,
scripts/train/run_disco*_8k.sh) sets `ppo_kl_type=kl`, verl's k1; "low_var_kl" (k3, r - 1 - log r) is only the
fallback default of a `getattr` in that code, used by no script. "k3" stays available.
Unlike the released code (per micro-batch after an all-gather), every group objective here sees its whole group:
the terms go through `accumulate_gradients`, exact under any micro-batching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from conspo.batch import RolloutBatch, SequenceInfo
from conspo.losses import KL_ESTIMATORS, group_logsumexp, group_structure, masked_sum, sequence_scores
from conspo.objective import Objective, check_parameter, register_objective


def disco_group_objective(scores: Tensor, correct: Tensor, group_ids: Tensor, tau: float) -> Tensor:
    """J(q) = mean_pos s - tau log sum_neg exp(s / tau), one value per group (ascending id), 0 if degenerate."""
    groups = group_structure(correct, group_ids)
    mean_pos = groups.sum(torch.where(correct, scores, torch.zeros_like(scores))) / groups.n_pos.clamp_min(1)
    lse_neg = group_logsumexp(scores / tau, ~correct, groups)
    return torch.where(groups.contrastive, mean_pos - tau * lse_neg, torch.zeros_like(mean_pos))


@register_objective("disco")
@dataclass
class DisCO(Objective):
    tau: float = 10.0
    delta: float = 1e-4  # trust region: KL(pi_old || pi_theta) <= delta
    beta: float = 1e3  # squared-hinge penalty weight
    kl_estimator: str = "k1"  # the released run scripts' ppo_kl_type=kl

    n_terms = 2  # (likelihood score s_i, sum_t of the per-token KL estimate)

    def __post_init__(self):
        check_parameter("tau", self.tau, self.tau > 0, "> 0")
        check_parameter("delta", self.delta, self.delta >= 0, ">= 0")
        check_parameter("beta", self.beta, self.beta >= 0, ">= 0")
        check_parameter("kl_estimator", self.kl_estimator, self.kl_estimator in ("k1", "k3"), "k1 or k3")

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        mask = batch.response_mask
        score = sequence_scores(logprobs, mask)
        # KL(pi_old || pi_theta) on samples of pi_old: the core estimators with pi_old in the sampling role
        kl_tokens = KL_ESTIMATORS[self.kl_estimator](batch.old_logprobs.to(logprobs.dtype), logprobs)
        return torch.stack([score, masked_sum(kl_tokens, mask)], dim=-1)

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        correct = info.correct.bool()
        per_group = disco_group_objective(terms[:, 0], correct, info.group_ids, self.tau)
        kl = terms[:, 1].sum() / info.lengths.to(terms.dtype).sum().clamp_min(1)  # batch token-mean
        penalty = 0.5 * self.beta * torch.clamp(kl - self.delta, min=0.0) ** 2
        degenerate = ~group_structure(correct, info.group_ids).contrastive
        metrics = {
            "objective": float(per_group.detach().mean()),
            "kl": float(kl.detach()),
            "kl_penalty": float(penalty.detach()),
            "degenerate_groups": float(degenerate.float().mean()),
        }
        return -per_group.mean() + penalty, metrics
