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
    assert sum(calls) == len(batch)  # one gradient pass, no no-grad pass
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


def _worker(rank, world, port, name, split, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        objective = build_objective(name)
        batch = make_batch(seed=7)
        rows = torch.arange(split) if rank == 0 else torch.arange(split, len(batch))  # splits a group across ranks
        # advantages come from whole groups, before the batch is split
        local = batch.select(rows).with_advantages(objective.advantages(batch.rewards, batch.group_ids)[rows])
        results = {}
        for label, passes_of in (("rows", lambda fn: RowChunks(fn, 3)),
                                 ("tokens", lambda fn: TokenBudget(fn, 2 * (P + T), _agree))):
            model = TinyLM(seed=123)
            passes = passes_of(model.response_logprobs)
            counts = [None, None]
            torch.distributed.all_gather_object(counts, len(passes.split(local)))
            accumulate_gradients(objective, local, passes, progress=0.5, collective=TorchDistributed())
            for p in model.parameters():  # what DDP does: average the gradients over ranks
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
            results[label] = ([p.grad for p in model.parameters()], counts)
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
    assert results["tokens"][1][0] == results["tokens"][1][1] > len(split_by_tokens(make_batch(seed=7).select(
        torch.arange(11)), 2 * (P + T)))  # the smaller rank runs more micro-batches than it needs alone
    _, ref = reference_gradient(build_objective(name), make_batch(seed=7), progress=0.5)
    for label, (grads, _) in results.items():
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4, msg=lambda m: f"{label}: {m}")
