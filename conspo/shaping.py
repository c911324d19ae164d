"""Rollout-batch pieces that are not a loss, usable with any method (the trainer applies them by config):

- dynamic sampling (DAPO, Sec. 3.2): keep only groups whose rewards are not all equal -- a group where every rollout
  gets the same reward has zero advantage and no contrastive signal -- and sample more prompts until the batch is
  full, with a cap on extra generation rounds (`informative_groups`, `DynamicSampling`);
- overlong reward shaping (DAPO, Eq. 13): a linear length penalty inside a buffer before the maximum response
  length (`OverlongShaping`).

KL estimators live in `conspo.losses` (`KL_ESTIMATORS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .losses import group_structure

# ---------------------------------------------------------------------------------------------- dynamic sampling


@dataclass(frozen=True)
class GroupFilter:
    """Which rows survive the filter, and how many groups were seen and dropped."""

    keep: Tensor  # [N] bool, rows of the kept groups
    kept_groups: Tensor  # group ids kept, ascending
    n_groups: int
    n_dropped: int


def informative_groups(rewards: Tensor, group_ids: Tensor) -> GroupFilter:
    """Keep the groups whose rewards are not all equal (DAPO's dynamic sampling filter).

    Works on the (shaped) rewards, so it also drops groups that are all correct / all incorrect with binary rewards.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("dynamic sampling: rewards contain NaN or infinite values")
    groups = group_structure(torch.zeros_like(rewards, dtype=torch.bool), group_ids)
    n = len(groups.ids)
    high = torch.full((n,), -torch.inf).scatter_reduce(0, groups.index, rewards, reduce="amax", include_self=True)
    low = torch.full((n,), torch.inf).scatter_reduce(0, groups.index, rewards, reduce="amin", include_self=True)
    informative = high > low
    return GroupFilter(
        keep=informative[groups.index],
        kept_groups=groups.ids[informative],
        n_groups=n,
        n_dropped=int((~informative).sum()),
    )


@dataclass
class DynamicSampling:
    """DAPO's dynamic sampling loop state: the trainer generates a first round and then at most `max_extra_rounds`
    more, passing each round's rewards to `add`, until `target_groups` informative groups are collected.

        sampler = DynamicSampling(target_groups=256, max_extra_rounds=3)
        while sampler.wants_more():
            batch = generate(...)
            keep = sampler.add(batch.rewards, batch.group_ids)  # rows to train on from this round
        log(sampler.metrics())

    `add` never returns more groups than the target still needs (extra informative groups are dropped in ascending
    group-id order, as counted in `n_surplus`). When the cap is hit first, the step trains on fewer groups and
    `metrics()["shortfall"]` says how many were missing.
    """

    target_groups: int
    max_extra_rounds: int = 3
    rounds: int = 0
    n_kept: int = 0
    n_dropped: int = 0
    n_surplus: int = 0
    kept_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.target_groups <= 0:
            raise ValueError(f"dynamic sampling: target_groups must be positive, got {self.target_groups}")
        if self.max_extra_rounds < 0:
            raise ValueError(f"dynamic sampling: max_extra_rounds must be >= 0, got {self.max_extra_rounds}")

    def wants_more(self) -> bool:
        return self.n_kept < self.target_groups and self.rounds <= self.max_extra_rounds

    def add(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        """Row mask [N] of this round's rows to keep."""
        if not self.wants_more():
            raise RuntimeError("dynamic sampling: the batch is full or the round cap is reached; stop generating")
        self.rounds += 1
        result = informative_groups(rewards, group_ids)
        self.n_dropped += result.n_dropped
        room = self.target_groups - self.n_kept
        taken = result.kept_groups[:room]
        self.n_surplus += len(result.kept_groups) - len(taken)
        self.n_kept += len(taken)
        self.kept_ids += taken.tolist()
        return result.keep & torch.isin(torch.as_tensor(group_ids), taken)

    def metrics(self) -> dict[str, float]:
        seen = self.n_kept + self.n_dropped + self.n_surplus
        return {
            "dynamic_sampling/rounds": float(self.rounds),
            "dynamic_sampling/dropped_groups": float(self.n_dropped),
            "dynamic_sampling/dropped_fraction": self.n_dropped / seen if seen else 0.0,
            "dynamic_sampling/shortfall": float(self.target_groups - self.n_kept),
        }


# ---------------------------------------------------------------------------------------------- overlong shaping


@dataclass(frozen=True)
class OverlongShaping:
    """DAPO's soft overlong punishment (Eq. 13), added to the task reward:

        R_length(L) = 0                                  if L <= L_max - L_buf
                    = ((L_max - L_buf) - L) / L_buf      if L_max - L_buf < L <= L_max
                    = -1                                 if L > L_max
        reward     += penalty * R_length(L)

    Defaults: L_buf = 4096, penalty factor 1.0 (DAPO's recipe with L_max = 20480; the run config's
    `overlong_shaping`). L_max is the run's maximum response length.
    """

    buffer: int = 4096
    penalty: float = 1.0

    def __post_init__(self):
        if self.buffer <= 0:
            raise ValueError(f"overlong shaping: buffer length must be positive, got {self.buffer}")
        if self.penalty < 0:
            raise ValueError(f"overlong shaping: penalty factor must be >= 0, got {self.penalty}")

    def length_reward(self, lengths: Tensor, max_length: int) -> Tensor:
        if self.buffer >= max_length:
            raise ValueError(
                f"overlong shaping: buffer {self.buffer} must be shorter than the maximum response length {max_length}"
            )
        lengths = torch.as_tensor(lengths, dtype=torch.float32)
        if bool((lengths < 0).any()):
            raise ValueError("overlong shaping: response lengths must be >= 0")
        expected = max_length - self.buffer
        return torch.clamp((expected - lengths) / self.buffer, min=-1.0, max=0.0)

    def __call__(self, rewards: Tensor, lengths: Tensor, max_length: int) -> Tensor:
        """Shaped rewards r + penalty * R_length(L)."""
        return torch.as_tensor(rewards, dtype=torch.float32) + self.penalty * self.length_reward(lengths, max_length)
