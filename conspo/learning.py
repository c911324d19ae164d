"""Whether a training run learned anything: the share of groups with a learning signal per step, and the verdict
a run's done.json carries and the tables show.

A group of G rollouts whose rewards are all equal (all correct or all wrong) gives every group-relative objective
no signal: its advantages, or its contrastive terms, are zero. A step whose groups are all like that changes the
policy only through regularisers (KL, weight decay). A run learned nothing when most of its steps had no group
with a signal, or when no update had a non-zero gradient (the weights did not move); `summarise` says which, and
`conspo tables` marks such a run's cells instead of ranking them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

NO_SIGNAL_MARK = "†"


def signal_share(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Share of groups whose rewards are not all equal (0.0 for an empty batch)."""
    groups = torch.unique(group_ids)
    if len(groups) == 0:
        return 0.0
    varied = [bool((rewards[group_ids == g] != rewards[group_ids == g][0]).any()) for g in groups]
    return sum(varied) / len(groups)


def summarise(records: list[dict]) -> dict:
    """The learning signal of a run from its metrics lines (`signal_groups`, `grad_norm` per step): steps without
    any group with a signal, the mean share, the largest gradient norm, and `learned_nothing` with its reason."""
    steps = len(records)
    shares = [r["signal_groups"] for r in records if "signal_groups" in r]
    norms = [r["grad_norm"] for r in records if isinstance(r.get("grad_norm"), (int, float))
             and math.isfinite(r["grad_norm"])]
    without = sum(share == 0 for share in shares)
    reasons = []
    if shares and without > len(shares) / 2:
        reasons.append(f"{without} of {len(shares)} steps had no group with a reward signal (every group's rollouts "
                       "all right or all wrong)")
    if norms and len(norms) == steps and max(norms) == 0.0:
        reasons.append("every update's gradient was exactly zero: the weights did not move")
    return {"steps": steps, "steps_without_signal": without,
            "mean_signal_groups": sum(shares) / len(shares) if shares else None,
            "max_grad_norm": max(norms) if norms else None,
            "learned_nothing": bool(reasons), "reason": "; ".join(reasons)}


def summarise_file(metrics: str | Path) -> dict:
    with open(metrics) as handle:
        return summarise([json.loads(line) for line in handle if line.strip()])


def learned_nothing(done: dict) -> str | None:
    """The reason a finished run (its done.json) learned nothing, or None (also for a run finished before this
    was recorded)."""
    learning = done.get("learning") or {}
    return learning.get("reason") if learning.get("learned_nothing") else None
