"""Float64 runs stay float64: each objective against its formula written out independently in float64, on random
batches, to 1e-12 relative. Each case failed before its fix at ~1e-8 (a float32 intermediate):

- SAPO's gate temperatures tau_pos / tau_neg (built from Python floats by torch.where, hence float32);
- the per-rollout weights `accumulate_gradients` computes for a linear objective (a float32 probe);
- the pass rate p = N+/G of ConSPO's Eq. 8 ("w/o contrastive objective").
"""

from __future__ import annotations

import math

import pytest
import torch

from conspo import RolloutBatch, accumulate_gradients, build_objective

T = 7
GROUP_SIZES = (3, 3, 6, 3)  # pass rates like 1/3 and 2/3 are not float32 numbers
RTOL = 1e-12


def float64_batch(seed: int) -> tuple[RolloutBatch, torch.Tensor]:
    """A random float64 batch (every group mixed) and the current policy's log-probs, off-policy by ~0.3."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(GROUP_SIZES)
    group_ids = torch.cat([torch.full((g,), i) for i, g in enumerate(GROUP_SIZES)])
    correct = torch.zeros(n, dtype=torch.bool)
    start = 0
    for g in GROUP_SIZES:  # 1 .. g-1 correct rollouts per group
        correct[start + torch.randperm(g, generator=gen)[: int(torch.randint(1, g, (1,), generator=gen))]] = True
        start += g
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    old = -3.0 * torch.rand(n, T, generator=gen, dtype=torch.float64)
    batch = RolloutBatch.create(
        response_ids=torch.zeros(n, T, dtype=torch.long),
        response_mask=torch.arange(T)[None] < lengths[:, None],
        old_logprobs=old,
        rewards=correct.double(),
        correct=correct,
        group_ids=group_ids,
        extras={"row": torch.arange(n)},  # lets a micro-batch find its rows of the log-prob leaf
    )
    return batch, old + 0.3 * torch.randn(n, T, generator=gen, dtype=torch.float64)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def objective_value_and_gradient(name, params, batch, logprobs, micro_batch_size):
    """The objective through the trainer's path: advantages, then `accumulate_gradients` over micro-batches."""
    objective = build_objective(name, params)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    leaf = logprobs.clone().requires_grad_(True)
    loss, _ = accumulate_gradients(objective, batch, lambda mb: leaf[mb.extras["row"]],
                                   micro_batch_size=micro_batch_size, progress=0.5)
    return loss, leaf.grad, batch.advantages


def group_advantage_formula(batch: RolloutBatch, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 1 with the population std, in float64."""
    out = torch.zeros(len(batch), dtype=torch.float64)
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        r = batch.rewards[rows]
        out[rows] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_sapo_in_float64_is_its_formula(seed):
    batch, logprobs = float64_batch(seed)
    tau_pos, tau_neg = 1.0, 1.05
    loss, grad, advantages = objective_value_and_gradient("sapo", {"tau_pos": tau_pos, "tau_neg": tau_neg}, batch,
                                                          logprobs, micro_batch_size=4)
    leaf = logprobs.clone().requires_grad_(True)
    a = group_advantage_formula(batch)[:, None]
    tau = torch.where(a > 0, torch.tensor(tau_pos, dtype=torch.float64), torch.tensor(tau_neg, dtype=torch.float64))
    ratio = torch.exp(leaf - batch.old_logprobs)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    mask = batch.response_mask.double()
    expected = ((-gate * a * mask).sum(-1) / mask.sum(-1)).mean()  # seq-mean-token-mean
    expected.backward()
    assert abs(loss - expected.item()) <= RTOL * abs(expected.item())
    assert relative_error(grad, leaf.grad) <= RTOL


@pytest.mark.parametrize("seed", range(10))
def test_grpo_weights_of_accumulate_gradients_in_float64_are_its_formula(seed):
    """GRPO's gradient, micro-batch by micro-batch, against the whole-batch formula: the per-rollout coefficient
    -A_i / (N L_i) must be a float64 number."""
    batch, logprobs = float64_batch(seed)
    loss, grad, advantages = objective_value_and_gradient("grpo", {}, batch, logprobs, micro_batch_size=5)
    assert advantages.dtype == torch.float64 and relative_error(advantages, group_advantage_formula(batch)) <= RTOL
    leaf = logprobs.clone().requires_grad_(True)
    a = group_advantage_formula(batch)[:, None]
    ratio = torch.exp(leaf - batch.old_logprobs)
    token = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
    mask = batch.response_mask.double()
    expected = ((token * mask).sum(-1) / mask.sum(-1)).mean()
    expected.backward()
    assert abs(loss - expected.item()) <= RTOL * abs(expected.item())
    assert relative_error(grad, leaf.grad) <= RTOL


@pytest.mark.parametrize("seed", range(10))
def test_conspo_eq8_in_float64_is_its_formula(seed):
    """ConSPO's Eq. 8 ablation: sqrt(p(1-p)) (mean_pos s - mean_neg s) per group, p = N+/G in float64."""
    batch, logprobs = float64_batch(seed)
    loss, grad, _ = objective_value_and_gradient("conspo_no_contrastive", {}, batch, logprobs, micro_batch_size=4)
    leaf = logprobs.clone().requires_grad_(True)
    mask = batch.response_mask.double()
    scores = (leaf * mask).sum(-1) / mask.sum(-1)
    per_group = []
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        pos, neg = rows & batch.correct, rows & ~batch.correct
        p = int(pos.sum()) / int(rows.sum())
        per_group.append(math.sqrt(p * (1 - p)) * (scores[pos].mean() - scores[neg].mean()))
    expected = -torch.stack(per_group).mean()
    expected.backward()
    assert abs(loss - expected.item()) <= RTOL * abs(expected.item())
    assert relative_error(grad, leaf.grad) <= RTOL
