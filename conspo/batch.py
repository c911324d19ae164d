"""The one data structure every objective reads: a batch of rollout groups.

A prompt q has a group of G rollouts. The batch holds, per rollout (row): the prompt (left-padded) and the response
(right-padded) token ids with masks, the per-token log-probs of the response under the behaviour ("old") policy and
optionally a reference policy, the verifier's reward and correctness, the group id, and the truncation flag.

Group ids may be any integers in any order: objectives find groups with `torch.unique`, so rows of a group need not
be adjacent (tests shuffle them). Every row must have at least one response token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


class BatchError(ValueError):
    """A rollout batch violates the structure the objectives rely on; the message names the field and rows."""


def _at_least_float32(values: Tensor) -> Tensor:
    """Rewards and advantages as float32, or float64 when given float64 (a float64 run stays float64)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _rows(mask: Tensor, limit: int = 8) -> str:
    idx = torch.nonzero(mask, as_tuple=False).flatten().tolist()
    shown = ", ".join(map(str, idx[:limit]))
    return f"[{shown}{', ...' if len(idx) > limit else ''}] ({len(idx)} rows)"


@dataclass
class SequenceInfo:
    """Per-rollout scalars that a group objective needs beside the sequence terms (cheap to all-gather)."""

    rewards: Tensor  # [N] float, after any reward shaping
    correct: Tensor  # [N] bool, the verifier's verdict
    group_ids: Tensor  # [N] long
    advantages: Tensor  # [N] float
    lengths: Tensor  # [N] float, number of response tokens L_i
    truncated: Tensor  # [N] bool

    def cat(self, others: list["SequenceInfo"]) -> "SequenceInfo":
        parts = [self, *others]
        return SequenceInfo(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SequenceInfo)})


@dataclass
class RolloutBatch:
    prompt_ids: Tensor  # [N, P] long, left-padded
    prompt_mask: Tensor  # [N, P] bool
    response_ids: Tensor  # [N, T] long, right-padded
    response_mask: Tensor  # [N, T] bool
    old_logprobs: Tensor  # [N, T] float: log pi_old(o_t) of the sampled tokens
    rewards: Tensor  # [N] float
    correct: Tensor  # [N] bool
    group_ids: Tensor  # [N] long
    truncated: Tensor  # [N] bool
    advantages: Tensor  # [N] float (filled by the trainer from group statistics; zeros until then)
    ref_logprobs: Tensor | None = None  # [N, T] float, only when an objective uses a reference model
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-row tensors owned by a method (first dim N)

    @classmethod
    def create(
        cls,
        *,
        response_ids: Tensor,
        response_mask: Tensor,
        old_logprobs: Tensor,
        rewards: Tensor,
        group_ids: Tensor,
        prompt_ids: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        correct: Tensor | None = None,
        reward_threshold: float | None = None,
        truncated: Tensor | None = None,
        advantages: Tensor | None = None,
        ref_logprobs: Tensor | None = None,
        extras: dict[str, Tensor] | None = None,
    ) -> "RolloutBatch":
        """Build and validate a batch.

        `correct` defaults to the rewards when they are binary (0/1); non-binary rewards need either an explicit
        `correct` or a `reward_threshold` (correct = reward > threshold), otherwise a BatchError is raised.
        """
        rewards = _at_least_float32(torch.as_tensor(rewards))
        n = rewards.shape[0]
        if correct is None:
            if reward_threshold is not None:
                correct = rewards > reward_threshold
            else:
                binary = (rewards == 0) | (rewards == 1)
                if not bool(binary.all()):
                    raise BatchError(
                        f"rewards are not binary at rows {_rows(~binary)} and neither `correct` nor "
                        "`reward_threshold` was given: say which rollouts count as correct"
                    )
                correct = rewards == 1
        if prompt_ids is None:
            prompt_ids = torch.zeros(n, 0, dtype=torch.long)
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
        batch = cls(
            prompt_ids=torch.as_tensor(prompt_ids),
            prompt_mask=torch.as_tensor(prompt_mask).bool(),
            response_ids=torch.as_tensor(response_ids),
            response_mask=torch.as_tensor(response_mask).bool(),
            old_logprobs=torch.as_tensor(old_logprobs),
            rewards=rewards,
            correct=torch.as_tensor(correct).bool(),
            group_ids=torch.as_tensor(group_ids),
            truncated=torch.zeros(n, dtype=torch.bool) if truncated is None else torch.as_tensor(truncated).bool(),
            advantages=torch.zeros(n) if advantages is None else _at_least_float32(torch.as_tensor(advantages)),
            ref_logprobs=ref_logprobs,
            extras=dict(extras or {}),
        )
        batch.validate()
        return batch

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return self.rewards.shape[0]

    @property
    def lengths(self) -> Tensor:
        return self.response_mask.sum(-1).to(torch.float32)

    @property
    def info(self) -> SequenceInfo:
        return SequenceInfo(
            rewards=self.rewards,
            correct=self.correct,
            group_ids=self.group_ids,
            advantages=self.advantages,
            lengths=self.lengths,
            truncated=self.truncated,
        )

    def validate(self) -> None:
        n = len(self)
        if self.rewards.ndim != 1:
            raise BatchError(f"rewards must be 1-D [N], got shape {tuple(self.rewards.shape)}")
        for name in ("correct", "group_ids", "truncated", "advantages"):
            t = getattr(self, name)
            if tuple(t.shape) != (n,):
                raise BatchError(f"{name} has shape {tuple(t.shape)}, expected ({n},) like rewards")
        if self.group_ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise BatchError(f"group_ids must be integers, got dtype {self.group_ids.dtype}")
        t = self.response_ids.shape
        if self.response_ids.ndim != 2 or t[0] != n:
            raise BatchError(f"response_ids has shape {tuple(t)}, expected ({n}, T)")
        for name in ("response_mask", "old_logprobs") + (("ref_logprobs",) if self.ref_logprobs is not None else ()):
            s = tuple(getattr(self, name).shape)
            if s != tuple(t):
                raise BatchError(f"{name} has shape {s} but response_ids has {tuple(t)}")
        if tuple(self.prompt_mask.shape) != tuple(self.prompt_ids.shape) or self.prompt_ids.shape[0] != n:
            raise BatchError(
                f"prompt_ids {tuple(self.prompt_ids.shape)} / prompt_mask {tuple(self.prompt_mask.shape)} "
                f"must both be ({n}, P)"
            )
        if not self.old_logprobs.is_floating_point():
            raise BatchError(f"old_logprobs must be floating point, got {self.old_logprobs.dtype}")
        empty = self.response_mask.sum(-1) == 0
        if bool(empty.any()):
            raise BatchError(f"zero-length responses at rows {_rows(empty)}: every rollout needs >= 1 token")
        for name in ("old_logprobs", "ref_logprobs"):
            lp = getattr(self, name)
            if lp is None:
                continue
            bad = ~torch.isfinite(lp) & self.response_mask
            if bool(bad.any()):
                raise BatchError(f"{name} is NaN or infinite inside the response mask at rows {_rows(bad.any(-1))}")
        if not bool(torch.isfinite(self.rewards).all()):
            raise BatchError(f"rewards are NaN or infinite at rows {_rows(~torch.isfinite(self.rewards))}")
        for key, value in self.extras.items():
            if value.shape[0] != n:
                raise BatchError(f"extras[{key!r}] has first dimension {value.shape[0]}, expected {n}")

    # ------------------------------------------------------------------ slicing
    def select(self, index: Tensor) -> "RolloutBatch":
        """Rows `index` (a LongTensor), every per-row field sliced alike."""
        per_row = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if f.name not in ("ref_logprobs", "extras")
        }
        return replace(
            self,
            **per_row,
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def micro_batches(self, size: int) -> list[tuple[Tensor, "RolloutBatch"]]:
        """Consecutive row chunks of at most `size` rows, with their row indices."""
        if size <= 0:
            raise BatchError(f"micro_batch_size must be positive, got {size}")
        out = []
        for start in range(0, len(self), size):
            idx = torch.arange(start, min(start + size, len(self)))
            out.append((idx, self.select(idx)))
        return out

    def with_advantages(self, advantages: Tensor) -> "RolloutBatch":
        return replace(self, advantages=_at_least_float32(advantages))

    def with_rewards(self, rewards: Tensor) -> "RolloutBatch":
        return replace(self, rewards=_at_least_float32(rewards))
