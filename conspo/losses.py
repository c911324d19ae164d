"""The shared core of every objective: sequence scores, group statistics, token aggregation, KL estimators,
and the per-group objectives of the ConSPO paper (Eqs. 7, 8, 15, 16).

All functions are plain tensor maths, differentiable where it matters, and handle degenerate groups (all correct or
all incorrect) by contributing exactly zero with zero gradient.

Public API (relied on by users and tests):
- `sequence_scores(logprobs, mask)`                       length-normalised log-probability s_theta(o)
- `clipped_ratio_scores(logprobs, old_logprobs, mask, eps)` the scores s+ / s- of Eq. 7
- `margin_at(progress, M, alpha)`                          Eq. 16
- `conspo_group_objective(scores, correct, group_ids, tau, margin)`  Eq. 15, one value per group
- `discriminative_group_objective(pos_scores, neg_scores, correct, group_ids)`  Eq. 8, one value per group
- `group_logsumexp(values, member, groups)`                per-group log-sum-exp over member rows (DisCO, Eq. 15)
- `clipped_surrogate(ratio, advantages, eps_low, eps_high)` PPO's clipped token loss (GRPO, DAPO, Dr. GRPO, CEPO)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------- sequence scores


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the last (token) dimension of `values` where `mask` is set; masked entries may hold anything finite."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum(-1)


def sequence_scores(logprobs: Tensor, mask: Tensor) -> Tensor:
    """s_theta(o) = (1/L) sum_t log pi_theta(o_t)  (paper Sec. 4.2). Shape [N, T] -> [N].

    A row with an empty mask scores 0 with zero gradient (RolloutBatch rejects such rows before they get here).
    """
    lengths = mask.sum(-1).clamp_min(1).to(logprobs.dtype)
    return masked_sum(logprobs, mask) / lengths


def clipped_ratio_scores(
    logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, eps: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Eq. 7: s+ = (1/L) sum_t min(rho_t, 1+eps),  s- = (1/L) sum_t max(rho_t, 1-eps),  rho_t = pi_theta / pi_old."""
    ratio = torch.exp(logprobs - old_logprobs)
    lengths = mask.sum(-1).clamp_min(1).to(logprobs.dtype)
    s_pos = masked_sum(torch.clamp(ratio, max=1.0 + eps), mask) / lengths
    s_neg = masked_sum(torch.clamp(ratio, min=1.0 - eps), mask) / lengths
    return s_pos, s_neg


# ---------------------------------------------------------------------------------------------- group statistics


@dataclass(frozen=True)
class Groups:
    """Group structure of a batch: `index[i]` is row i's group position (0..n_groups-1, ascending group id)."""

    ids: Tensor  # [n_groups] distinct group ids, ascending
    index: Tensor  # [N] position of each row's group in `ids`
    n_pos: Tensor  # [n_groups] number of correct rollouts N+
    n_neg: Tensor  # [n_groups] number of incorrect rollouts N-

    @property
    def size(self) -> Tensor:
        return self.n_pos + self.n_neg

    @property
    def contrastive(self) -> Tensor:
        """Groups with both a correct and an incorrect rollout (the others carry no contrastive signal)."""
        return (self.n_pos > 0) & (self.n_neg > 0)

    def sum(self, values: Tensor) -> Tensor:
        """Per-group sum of a per-row tensor."""
        out = torch.zeros(len(self.ids), dtype=values.dtype, device=values.device)
        return out.index_add(0, self.index, values)


def group_structure(correct: Tensor, group_ids: Tensor) -> Groups:
    ids, index = torch.unique(group_ids, sorted=True, return_inverse=True)
    correct = correct.bool()
    n_pos = torch.zeros(len(ids), dtype=torch.long, device=correct.device).index_add(0, index, correct.long())
    n_all = torch.bincount(index, minlength=len(ids))
    return Groups(ids=ids, index=index, n_pos=n_pos, n_neg=n_all - n_pos)


def degenerate_fraction(correct: Tensor, group_ids: Tensor) -> float:
    """Fraction of groups whose rollouts are all correct or all incorrect (logged by the trainer)."""
    groups = group_structure(correct, group_ids)
    return float((~groups.contrastive).float().mean()) if len(groups.ids) else 0.0


STD_MODES = ("population", "unbiased", "none")


def group_advantages(rewards: Tensor, group_ids: Tensor, std: str = "population", eps: float = 1e-6) -> Tensor:
    """GRPO advantage A_i = (r_i - mean_g r) / (std_g r + eps)  (paper Eq. 1 uses the population std).

    std="unbiased" matches verl (eps 1e-6) and TRL (eps 1e-4); std="none" is Dr. GRPO's A_i = r_i - mean_g r.
    A group of one rollout has unbiased std undefined: its advantage is 0.
    """
    if std not in STD_MODES:
        raise ValueError(f"advantage std mode {std!r} is not one of {STD_MODES}")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))  # float64 rewards stay float64
    groups = group_structure(torch.zeros_like(rewards, dtype=torch.bool), group_ids)
    count = groups.size.to(rewards.dtype)
    mean = groups.sum(rewards) / count
    centred = rewards - mean[groups.index]
    if std == "none":
        return centred
    sq = groups.sum(centred**2)
    dof = count if std == "population" else (count - 1).clamp_min(1)
    sd = torch.sqrt(sq / dof)
    sd = sd[groups.index]
    # a group whose rewards are all equal (or a group of one) has no signal: advantage 0, never 0/0
    informative = (count[groups.index] > 1) & (sd > 0)
    return torch.where(informative, centred / torch.where(informative, sd + eps, torch.ones_like(sd)), torch.zeros_like(sd))


# ---------------------------------------------------------------------------------------------- token aggregation


def _seq_mean_token_mean(token_sums: Tensor, lengths: Tensor, constant: float | None) -> Tensor:
    return (token_sums / lengths.clamp_min(1)).mean()


def _token_mean(token_sums: Tensor, lengths: Tensor, constant: float | None) -> Tensor:
    return token_sums.sum() / lengths.sum().clamp_min(1)


def _seq_mean_token_sum_norm(token_sums: Tensor, lengths: Tensor, constant: float | None) -> Tensor:
    if constant is None or constant <= 0:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs a positive constant (e.g. the max response length)")
    return (token_sums / constant).mean()


AGGREGATIONS = {
    "seq-mean-token-mean": _seq_mean_token_mean,  # GRPO, Eq. 3: mean over rollouts of each rollout's token mean
    "token-mean": _token_mean,  # DAPO: mean over every token of the batch
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,  # Dr. GRPO: token sum / constant, mean over rollouts
}


def aggregate_token_sums(token_sums: Tensor, lengths: Tensor, mode: str, constant: float | None = None) -> Tensor:
    """Aggregate per-rollout token sums sum_t m_t l_t into one scalar under an aggregation mode.

    Written on token sums (not on [N, T] tensors) so that a micro-batched backward can weight each rollout by the
    coefficient that the whole optimizer-step batch gives it.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown token aggregation {mode!r}; known: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode](token_sums, lengths.to(token_sums.dtype), constant)


def aggregate_tokens(values: Tensor, mask: Tensor, mode: str, constant: float | None = None) -> Tensor:
    """Aggregate a per-token tensor [N, T] under `mode` (convenience over `aggregate_token_sums`)."""
    return aggregate_token_sums(masked_sum(values, mask), mask.sum(-1), mode, constant)


# ---------------------------------------------------------------------------------------------- KL estimators


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token estimator of KL(pi_theta || pi_ref) on samples of pi_theta: log pi_theta - log pi_ref."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """0.5 (log pi_theta - log pi_ref)^2."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's low-variance non-negative estimator exp(log r) - 1 - log r with r = pi_ref / pi_theta (GRPO's)."""
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - 1.0 - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ---------------------------------------------------------------------------------------------- token surrogates


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """PPO's clipped surrogate per token, negated to a loss (paper Eq. 4):
    -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A). eps_high > eps_low is DAPO's clip-higher."""
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return -torch.minimum(ratio * advantages, clipped * advantages)


# ---------------------------------------------------------------------------------------------- ConSPO maths


def margin_at(progress: float, M: float, alpha: float) -> float:
    """Eq. 16: rho_t = min(lambda_t / alpha, 1),  m_t = (M/2)(1 - cos(pi rho_t)),  lambda_t = progress in [0, 1]."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"training progress must lie in [0, 1], got {progress}")
    if alpha <= 0:
        raise ValueError(f"margin warm-up alpha must be > 0, got {alpha}")
    if M < 0:
        raise ValueError(f"margin M must be >= 0, got {M}")
    rho = min(progress / alpha, 1.0)
    return 0.5 * M * (1.0 - math.cos(math.pi * rho))


def group_logsumexp(values: Tensor, member: Tensor, groups: Groups) -> Tensor:
    """Per-group log sum_{j in group, member[j]} exp(values_j); 0 for groups with no member (never -inf)."""
    n = len(groups.ids)
    masked = torch.where(member, values, torch.full_like(values, -torch.inf))
    peak = torch.full((n,), -torch.inf, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(0, groups.index, masked, reduce="amax", include_self=True).detach()
    has = torch.isfinite(peak)
    peak = torch.where(has, peak, torch.zeros_like(peak))
    # the exponent is masked before exp so non-members never overflow (an inf there would poison the gradient)
    exponent = torch.where(member, values - peak[groups.index], torch.zeros_like(values))
    shifted = torch.where(member, torch.exp(exponent), torch.zeros_like(values))
    total = groups.sum(shifted)
    return torch.where(has, peak + torch.log(torch.where(has, total, torch.ones_like(total))), torch.zeros_like(peak))


def conspo_group_objective(
    scores: Tensor, correct: Tensor, group_ids: Tensor, tau: float, margin: float = 0.0
) -> Tensor:
    """Eq. 15, per group (to be maximised):

        J(q) = (1/N+) sum_{i in pos} tau * log[ exp((s_i - m)/tau) / (exp((s_i - m)/tau) + sum_{j in neg} exp(s_j/tau)) ]

    Returns one value per distinct group id, ascending; exactly 0 (with zero gradient) for groups with no correct or
    no incorrect rollout. `scores` may be the likelihood scores, or for the Table 6 ablation a per-row mix of s+ for
    positives and s- for negatives.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")
    correct = correct.bool()
    groups = group_structure(correct, group_ids)
    z = scores / tau
    z_pos = (scores - margin) / tau
    lse_neg = group_logsumexp(z, ~correct, groups)  # log sum_{j in neg} exp(s_j / tau)
    valid_row = correct & groups.contrastive[groups.index]
    # tau * [z_i - log(exp(z_i) + exp(lse_neg))] for positives of contrastive groups (Eq. 10/15)
    log_p_pos = z_pos - torch.logaddexp(z_pos, lse_neg[groups.index])
    per_row = torch.where(valid_row, tau * log_p_pos, torch.zeros_like(log_p_pos))
    n_pos = groups.n_pos.clamp_min(1).to(scores.dtype)
    return torch.where(groups.contrastive, groups.sum(per_row) / n_pos, torch.zeros_like(n_pos))


def contrastive_probabilities(
    scores: Tensor, correct: Tensor, group_ids: Tensor, tau: float, margin: float = 0.0
) -> Tensor:
    """P_i+ of Eq. 11 for every correct rollout of a contrastive group (NaN elsewhere): the softmax weight of the
    (margin-shifted) positive against its group's negatives. Logged by the trainer, drawn in Figure 1."""
    correct = correct.bool()
    groups = group_structure(correct, group_ids)
    z_pos = (scores - margin) / tau
    lse_neg = group_logsumexp(scores / tau, ~correct, groups)
    p = torch.exp(z_pos - torch.logaddexp(z_pos, lse_neg[groups.index]))
    valid_row = correct & groups.contrastive[groups.index]
    return torch.where(valid_row, p, torch.full_like(p, torch.nan))


def discriminative_group_objective(
    pos_scores: Tensor, neg_scores: Tensor, correct: Tensor, group_ids: Tensor
) -> Tensor:
    """Eq. 8, per group: sqrt(p(1-p)) * (mean_{pos} s_pos - mean_{neg} s_neg),  p = N+/G.

    With the clipped-ratio scores of Eq. 7 this is GRPO's clipped surrogate (Proposition 1); with the likelihood
    score for both it is the "w/o contrastive objective" ablation of Table 6. Zero for degenerate groups.
    """
    correct = correct.bool()
    groups = group_structure(correct, group_ids)
    zeros = torch.zeros_like(pos_scores)
    mean_pos = groups.sum(torch.where(correct, pos_scores, zeros)) / groups.n_pos.clamp_min(1)
    mean_neg = groups.sum(torch.where(correct, zeros, neg_scores)) / groups.n_neg.clamp_min(1)
    p = groups.n_pos.to(pos_scores.dtype) / groups.size.to(pos_scores.dtype)  # in the scores' dtype
    value = torch.sqrt(p * (1 - p)) * (mean_pos - mean_neg)
    return torch.where(groups.contrastive, value, torch.zeros_like(value))
