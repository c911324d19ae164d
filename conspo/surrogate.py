"""Shared core of the token-level surrogates (GRPO, DAPO, Dr. GRPO, CISPO, SAPO, CEPO's base): a per-token loss,
an optional per-token KL penalty to a reference model, and an aggregation mode.

A subclass only writes its per-token loss `token_loss(logprobs, old_logprobs, advantages)`; the sequence terms are
the per-rollout token sums of that loss (and of the KL), and the loss aggregates them linearly, so micro-batching
and data-parallel splits are exact (conspo.objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import RolloutBatch, SequenceInfo
from .losses import AGGREGATIONS, KL_ESTIMATORS, STD_MODES, aggregate_token_sums, group_advantages, masked_sum
from .objective import Objective, check_parameter


@dataclass
class GroupRelative(Objective):
    """Objectives driven by GRPO's group-relative advantage A_i = (r_i - mean_g r) / (std_g r + eps) (paper Eq. 1).

    The std estimator is a config choice because the sources differ: the paper's Eq. 1 (and Proposition 1) use the
    population std, verl the unbiased std with eps 1e-6, TRL the unbiased std with eps 1e-4; "none" is Dr. GRPO.
    Default "population": it is the paper's definition, and within a group of G rollouts the unbiased choice only
    rescales every advantage by sqrt((G-1)/G) (0.935 for G = 8), a constant factor on a loss linear in A.
    """

    advantage_std: str = "population"
    advantage_eps: float = 1e-6

    def __post_init__(self):
        check_parameter("advantage_std", self.advantage_std, self.advantage_std in STD_MODES,
                        f"one of {', '.join(STD_MODES)}")
        check_parameter("advantage_eps", self.advantage_eps, self.advantage_eps >= 0, ">= 0")

    def advantages(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        return group_advantages(rewards, group_ids, self.advantage_std, self.advantage_eps)


@dataclass
class TokenSurrogate(GroupRelative):
    aggregation: str = "seq-mean-token-mean"
    aggregation_constant: float | None = None  # the constant of "seq-mean-token-sum-norm" (max response length)
    kl_coef: float = 0.0  # beta; the paper's reformulation drops the KL term
    kl_estimator: str = "k3"

    n_terms = 2
    linear = True

    def __post_init__(self):
        super().__post_init__()
        check_parameter("kl_coef", self.kl_coef, self.kl_coef >= 0, ">= 0")
        check_parameter("kl_estimator", self.kl_estimator, self.kl_estimator in KL_ESTIMATORS,
                        f"one of {', '.join(KL_ESTIMATORS)}")
        check_parameter("aggregation", self.aggregation, self.aggregation in AGGREGATIONS,
                        f"one of {', '.join(AGGREGATIONS)}")
        constant = self.aggregation_constant
        if constant is not None or self.aggregation == "seq-mean-token-sum-norm":
            check_parameter("aggregation_constant", constant, constant is not None and constant > 0,
                            "> 0 (the constant of seq-mean-token-sum-norm, e.g. the max response length)")

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def token_loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> Tensor:
        """Per-token loss [n, T] to minimise; `advantages` is [n, 1] (or [n, T] for token-level advantages)."""
        raise NotImplementedError

    def token_advantages(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        """Advantages broadcast to tokens; methods with token-level advantages (CEPO) override this."""
        return batch.advantages[:, None].to(logprobs.dtype)

    def inert_rows(self, batch: RolloutBatch) -> Tensor:
        """Rows whose token advantages are all zero: every token loss is A_t times a function of the ratio, so the
        policy term is 0 whatever the log-probs; without a KL term nothing else depends on them."""
        advantages = self.token_advantages(batch, batch.old_logprobs).expand(batch.response_mask.shape)
        no_advantage = torch.where(batch.response_mask, advantages, 0).eq(0).all(-1)
        return no_advantage & (self.kl_coef == 0)

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        mask = batch.response_mask
        policy = masked_sum(self.token_loss(logprobs, batch.old_logprobs, self.token_advantages(batch, logprobs)), mask)
        if self.kl_coef > 0:
            if batch.ref_logprobs is None:
                raise ValueError(f"{self.name}: kl_coef={self.kl_coef} > 0 but the batch carries no ref_logprobs")
            kl = masked_sum(KL_ESTIMATORS[self.kl_estimator](logprobs, batch.ref_logprobs), mask)
        else:
            kl = torch.zeros_like(policy)
        return torch.stack([policy, kl], dim=-1)

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        policy = aggregate_token_sums(terms[:, 0], info.lengths, self.aggregation, self.aggregation_constant)
        kl = aggregate_token_sums(terms[:, 1], info.lengths, self.aggregation, self.aggregation_constant)
        return policy + self.kl_coef * kl, {"policy_loss": float(policy.detach()), "kl": float(kl.detach())}


def clip_fraction(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, low: float, high: float) -> float:
    """Fraction of response tokens whose ratio lies outside [1 - low, 1 + high] (logged by the trainer)."""
    ratio = torch.exp(logprobs - old_logprobs)
    outside = ((ratio < 1 - low) | (ratio > 1 + high)) & mask
    return float(outside.sum() / mask.sum().clamp_min(1))
