"""Exact group gradients: the parameter gradient accumulated micro-batch by micro-batch (and across two gloo
processes) equals the gradient of the objective on the whole batch, for group objectives and token surrogates, under
row-count micro-batches and under the trainer's token-budget micro-batches (rows sorted by length, each micro-batch
padded to its own widths, as many micro-batches on every rank)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conspo import RolloutBatch, accumulate_gradients, build_objective
from conspo.forward import split_by_tokens
from conspo.objective import RowChunks, TorchDistributed

V, P, T = 23, 3, 6


class TinyLM(nn.Module):
    """A small recurrent LM: enough to make every rollout's log-probs depend on all shared parameters."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.out = nn.Linear(16, V)

    def response_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        if not len(batch):  # an empty micro-batch: no rows, but a graph through every parameter (zero gradients)
            return batch.response_ids.new_zeros(batch.response_ids.shape, dtype=torch.float32) + 0 * sum(
                p.sum() for p in self.parameters())
        ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        hidden, _ = self.rnn(self.emb(ids))
        logits = self.out(hidden[:, P - 1 : -1])  # position t predicts token t+1
        return torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)


def make_batch(seed=0, group_sizes=(8, 8, 5, 8), off_policy=0.3, with_ref=False):
    gen = torch.Generator().manual_seed(seed)
    n = sum(group_sizes)
    group_ids = torch.cat([torch.full((g,), 10 + i) for i, g in enumerate(group_sizes)])
    rewards = torch.randint(0, 2, (n,), generator=gen).double()
    rewards[-8:] = 1.0  # one all-correct (degenerate) group
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    model = TinyLM(seed=123)
    batch = RolloutBatch.create(
        prompt_ids=torch.randint(0, V, (n, P), generator=gen),
        response_ids=torch.randint(0, V, (n, T), generator=gen),
        response_mask=torch.arange(T)[None] < lengths[:, None],
        old_logprobs=torch.zeros(n, T),
        rewards=rewards,
        group_ids=group_ids,
    )
    with torch.no_grad():
        current = model.response_logprobs(batch)
    batch.old_logprobs = current + off_policy * torch.randn(n, T, generator=gen)
    if with_ref:
        batch.ref_logprobs = current + 0.2 * torch.randn(n, T, generator=gen)
    return batch


def reference_gradient(objective, batch, progress):
    model = TinyLM(seed=123)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    terms = objective.sequence_terms(batch, model.response_logprobs(batch))
    loss, _ = objective.loss(terms, batch.info, progress)
    loss.backward()
    return float(loss), [p.grad.clone() for p in model.parameters()]


class TokenBudget(RowChunks):
    """The trainer's micro-batches (conspo.forward.split_by_tokens) over a log-prob function."""

    def __init__(self, logprob_fn, max_tokens, agree=lambda k: k):
        super().__init__(logprob_fn)
        self.max_tokens, self.agree = max_tokens, agree

    def split(self, batch):
        return split_by_tokens(batch, self.max_tokens, self.agree)


def accumulated_gradient(objective, batch, progress, micro_batch_size=None, collective=None, max_tokens=None):
    model = TinyLM(seed=123)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    passes = RowChunks(model.response_logprobs, micro_batch_size) if max_tokens is None \
        else TokenBudget(model.response_logprobs, max_tokens)
    loss, _ = accumulate_gradients(objective, batch, passes, progress=progress, collective=collective)
    return loss, [p.grad.clone() for p in model.parameters()]


METHODS = [
    ("conspo", {}),
    ("conspo_ratio_scores", {}),
    ("conspo_no_contrastive", {}),
    ("conspo", {"tau": 1.0, "margin_max": 0.2}),
    ("grpo", {}),
    ("grpo", {"kl_coef": 0.05}),
    ("grpo", {"aggregation": "token-mean"}),
]


@pytest.mark.parametrize("name,params", METHODS)
@pytest.mark.parametrize("micro_batch_size", [1, 3, 29, 1000])
def test_micro_batching_gives_the_whole_batch_gradient(name, params, micro_batch_size):
    objective = build_objective(name, params)
    batch = make_batch(with_ref=objective.needs_reference)
    ref_loss, ref_grads = reference_gradient(objective, batch, progress=0.4)
    loss, grads = accumulated_gradient(objective, batch, 0.4, micro_batch_size)
    assert abs(loss - ref_loss) < 1e-5
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,params", METHODS)
@pytest.mark.parametrize("max_tokens", [P + T, 40])
def test_token_budget_micro_batches_give_the_whole_batch_gradient(name, params, max_tokens):
    """Rows of P + 1..P + T tokens: one row per micro-batch, and several rows of similar length per micro-batch;
    micro-batches are cut to their own longest response, so the log-prob function sees narrower batches."""
    objective = build_objective(name, params)
    batch = make_batch(seed=5, with_ref=objective.needs_reference)
    widths = [mb.response_ids.shape[1] for _, mb in split_by_tokens(batch, max_tokens)]
    assert min(widths) < T and len(widths) < len(batch) or max_tokens == P + T
    ref_loss, ref_grads = reference_gradient(objective, batch, progress=0.4)
    loss, grads = accumulated_gradient(objective, batch, 0.4, max_tokens=max_tokens)
    assert abs(loss - ref_loss) < 1e-5
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,params", METHODS[:5])
def test_row_order_does_not_change_the_gradient(name, params):
    objective = build_objective(name, params)
    batch = make_batch(seed=3)
    _, ref_grads = reference_gradient(objective, batch, progress=0.9)
    shuffled = batch.select(torch.randperm(len(batch), generator=torch.Generator().manual_seed(0)))
    _, grads = accumulated_gradient(objective, shuffled, 0.9, micro_batch_size=4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


def test_on_policy_terms_from_old_logprobs_skip_the_extra_pass():
    objective = build_objective("conspo")
    batch = make_batch(off_policy=0.0)
    model = TinyLM(seed=123)
    calls = []

    def counting(mb):
        calls.append(len(mb))
        return model.response_logprobs(mb)

    terms = objective.sequence_terms(batch, batch.old_logprobs)
    accumulate_gradients(objective, batch, RowChunks(counting, 8), progress=0.0, terms=terms)
    assert sum(calls) == len(batch) - 8  # one gradient pass, no no-grad pass; the all-correct group has zero
    # coefficients under ConSPO, so its 8 rows are not forwarded
    _, ref_grads = reference_gradient(objective, batch, progress=0.0)
    for p, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("off_policy", [0.0, 0.3])
def test_a_batch_of_one_micro_batch_takes_its_coefficients_from_the_gradient_pass(off_policy):
    objective = build_objective("conspo")
    batch = make_batch(off_policy=off_policy)
    model = TinyLM(seed=123)
    calls = []

    def counting(mb):
        calls.append((len(mb), torch.is_grad_enabled()))
        return model.response_logprobs(mb)

    loss, _ = accumulate_gradients(objective, batch, TokenBudget(counting, 10_000), progress=0.6)
    assert calls == [(len(batch), True)]  # one pass, with gradients
    ref_loss, ref_grads = reference_gradient(objective, batch, progress=0.6)
    assert abs(loss - ref_loss) < 1e-5
    for p, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, r, atol=1e-6, rtol=1e-4)


SKIP_METHODS = [  # (method, params, off-policy noise, rows of the all-correct group left out of the gradient pass)
    ("conspo", {}, 0.3, 8), ("conspo_no_contrastive", {}, 0.3, 8), ("gmpo", {}, 0.3, 8),
    ("grpo", {}, 0.3, 8), ("cispo", {}, 0.3, 8), ("sapo", {}, 0.3, 8),
    ("grpo", {"kl_coef": 0.05}, 0.3, 0),  # the KL term weighs every row
    ("disco", {}, 0.0, 8),  # on-policy: DisCO's KL hinge is inactive
    ("disco", {}, 0.3, 0),  # off-policy: the active hinge weighs every row
]


@pytest.mark.parametrize("name,params,off_policy,expected", SKIP_METHODS)
def test_skipping_zero_coefficient_rows_gives_the_same_gradient(name, params, off_policy, expected):
    """Micro-batches of 3 rows (so a non-linear objective's coefficients come from a no-grad pass): the gradient with
    rows skipped equals the whole-batch gradient and the one without skipping; the all-correct group (8 of 29 rows)
    is left out of the gradient pass unless a KL term weighs it."""
    objective = build_objective(name, params)
    batch = make_batch(off_policy=off_policy, with_ref=objective.needs_reference)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    _, ref_grads = reference_gradient(objective, batch, progress=0.4)
    forwarded, results = {}, {}
    for skip in (True, False):
        model, calls = TinyLM(seed=123), []

        def counting(mb):
            calls.append((len(mb), torch.is_grad_enabled()))
            return model.response_logprobs(mb)

        loss, metrics = accumulate_gradients(objective, batch, RowChunks(counting, 3), progress=0.4,
                                             skip_zero_rows=skip)
        forwarded[skip] = sum(n for n, grad in calls if grad)
        results[skip] = (loss, metrics["skipped_rows"], [p.grad.clone() for p in model.parameters()])
    for grads in (results[True][2], results[False][2]):
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-6)
    assert forwarded[False] == len(batch) and results[False][1] == 0.0
    assert forwarded[True] == len(batch) - expected and results[True][1] == pytest.approx(expected / len(batch))


@pytest.mark.parametrize("name", ["conspo", "grpo"])
def test_a_batch_without_signal_still_gives_every_parameter_a_zero_gradient(name):
    """Every group degenerate: no row is forwarded with gradients, yet every .grad is a zero tensor (not None), so the
    optimizer steps as it did before skipping existed (AdamW moves with its moments and decay)."""
    objective = build_objective(name)
    batch = make_batch(group_sizes=(8, 8))
    batch.rewards[:8], batch.correct[:8] = 0.0, False  # all wrong; the second group is all correct already
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    model, calls = TinyLM(seed=123), []

    def counting(mb):
        calls.append((len(mb), torch.is_grad_enabled()))
        return model.response_logprobs(mb)

    _, metrics = accumulate_gradients(objective, batch, RowChunks(counting, 3), progress=0.4)
    assert metrics["skipped_rows"] == 1.0
    assert [n for n, grad in calls if grad] == [0]  # one empty gradient micro-batch
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_non_finite_terms_are_refused():
    objective = build_objective("conspo")
    batch = make_batch()
    model = TinyLM(seed=123)

    def poisoned(mb):
        lp = model.response_logprobs(mb)
        return lp + torch.where(torch.arange(len(mb))[:, None] == 0, torch.nan, 0.0)

    with pytest.raises(FloatingPointError, match="rows"):
        accumulate_gradients(objective, batch, RowChunks(poisoned, 8), progress=0.0)


# ------------------------------------------------------------------------------------------------ two processes


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agree(count: int) -> int:
    """The micro-batch count every rank runs: the maximum over ranks (as the trainer agrees it)."""
    total = torch.tensor([count])
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX)
    return int(total)


def _worker(rank, world, port, names, split, out, off_policy=0.3):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in names.split(","):
            objective = build_objective(name)
            batch = make_batch(seed=7, off_policy=off_policy)
            rows = torch.arange(split) if rank == 0 else torch.arange(split, len(batch))  # splits a group
            # advantages come from whole groups, before the batch is split
            local = batch.select(rows).with_advantages(objective.advantages(batch.rewards, batch.group_ids)[rows])
            for label, passes_of in (("rows", lambda fn: RowChunks(fn, 3)),
                                     ("tokens", lambda fn: TokenBudget(fn, 2 * (P + T), _agree))):
                model = TinyLM(seed=123)
                passes = passes_of(model.response_logprobs)
                counts = [None, None]
                torch.distributed.all_gather_object(counts, len(passes.split(local)))
                _, metrics = accumulate_gradients(objective, local, passes, progress=0.5,
                                                  collective=TorchDistributed())
                for p in model.parameters():  # what DDP does: average the gradients over ranks
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
                results[f"{name}/{label}"] = ([p.grad for p in model.parameters()], counts, metrics["skipped_rows"])
        if rank == 0:
            torch.save(results, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("name", ["conspo", "grpo"])
def test_two_gloo_processes_give_the_whole_batch_gradient(tmp_path, name):
    """11 and 18 rows on the two ranks, in micro-batches of 3 rows, and by a token budget (both ranks run the
    larger rank's number of micro-batches)."""
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, _free_port(), name, 11, str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    counts = results[f"{name}/tokens"][1]
    alone = len(split_by_tokens(make_batch(seed=7).select(torch.arange(11)), 2 * (P + T)))
    assert counts[0] == counts[1] > alone  # the smaller rank runs more micro-batches than it needs alone
    _, ref = reference_gradient(build_objective(name), make_batch(seed=7), progress=0.5)
    for label, (grads, *_) in results.items():
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4, msg=lambda m: f"{label}: {m}")


def test_two_gloo_processes_skipping_a_whole_rank_give_the_whole_batch_gradient(tmp_path):
    """21 and 8 rows: the second rank holds only the all-correct group, so it forwards nothing with gradients and
    runs empty micro-batches alongside the first rank's (ConSPO, GRPO, and DisCO, on-policy so that its KL hinge is
    inactive); the averaged gradient is the whole-batch one."""
    out = tmp_path / "grads.pt"
    names = ("conspo", "grpo", "disco")
    mp.spawn(_worker, args=(2, _free_port(), ",".join(names), 21, str(out), 0.0), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    for name in names:
        _, ref = reference_gradient(build_objective(name), make_batch(seed=7, off_policy=0.0), progress=0.5)
        for label in ("rows", "tokens"):
            grads, _, skipped = results[f"{name}/{label}"]
            assert skipped >= 8 / 29, (name, label, skipped)  # at least the second rank's rows
            for g, r in zip(grads, ref):
                torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}/{label}: {m}")
