"""conspo.forward: the policy's passes equal the full-logits path they replace (left-padded prompts with an
attention mask, logits over the whole vocabulary, log-softmax), micro-batches follow the token budget, and the
chunked head's gradients are exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks.bench_memory import full_logits_logprobs
from conspo.batch import RolloutBatch
from conspo.forward import PolicyForward, chunked_logprobs, computed_positions, output_head, token_budget_partition
from conspo.rollout import pad

V = 97


def reference_head(hidden, weight, targets, temperature):
    """Log-probs and entropies from the full [n, V] logits (float32, float64 for float64 inputs)."""
    logits = (hidden @ weight.T).to(torch.promote_types(weight.dtype, torch.float32))
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def head_inputs(dtype, n=23, width=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, width, generator=gen).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, width, generator=gen) / width ** 0.5).to(dtype).requires_grad_(True)
    return hidden, weight, torch.randint(0, V, (n,), generator=gen), torch.randn(n, generator=gen)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_head_equals_full_logits_in_float64(temperature, chunk):
    hidden, weight, targets, upstream = head_inputs(torch.float64)
    lp, ent = chunked_logprobs(hidden, weight, targets, temperature, chunk)
    assert lp.dtype == torch.float64 and not ent.requires_grad
    grads = torch.autograd.grad((lp * upstream).sum(), (hidden, weight))  # any per-token gradient
    ref_lp, ref_ent = reference_head(hidden, weight, targets, temperature)
    ref_grads = torch.autograd.grad((ref_lp * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(lp, ref_lp, atol=1e-12, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


def test_chunked_head_in_bfloat16_matches_full_logits_within_the_stated_tolerance():
    """bf16 head and hidden states: the same bf16 products, float32 softmax; the weight gradient is summed over
    chunks in float32 where the full path sums once. Stated tolerance (docs/training.md): log-probs and entropies
    within 1e-5, gradients within 1% of their largest entry."""
    hidden, weight, targets, upstream = head_inputs(torch.bfloat16, n=64)
    lp, ent = chunked_logprobs(hidden, weight, targets, 1.0, chunk=16)
    grads = torch.autograd.grad((lp * upstream).sum(), (hidden, weight))
    ref_lp, ref_ent = reference_head(hidden, weight, targets, 1.0)
    ref_grads = torch.autograd.grad((ref_lp * upstream).sum(), (hidden, weight))
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16
        assert float((g.float() - r.float()).abs().max()) <= 0.01 * float(r.float().abs().max())


# --------------------------------------------------------------------------------------------- whole policy


def tiny_qwen(dtype, tied=False):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         max_position_embeddings=128)
    return Qwen2ForCausalLM(config).to(dtype)


def rollout_rows(seed=0, rows=9):
    """Rows of different prompt (1-6) and response (1-9) lengths, left-/right-padded as the trainer stores them."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, V, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(rows)]
    responses = [torch.randint(1, V, (int(torch.randint(1, 10, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(rows)]
    prompt_ids, prompt_mask = pad(prompts, 0, left=True)
    response_ids, response_mask = pad(responses, 0, left=False)
    return RolloutBatch.create(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                               response_mask=response_mask, old_logprobs=torch.zeros(response_ids.shape),
                               rewards=torch.zeros(rows), group_ids=torch.arange(rows) // 3)


@pytest.mark.parametrize("temperature,tied", [(1.0, False), (0.6, True)])
def test_policy_passes_equal_the_full_logits_path_in_float64(temperature, tied):
    """Packed rows without a mask and the chunked head give the masked full-logits path's log-probs, entropies and
    parameter gradients, micro-batch by micro-batch of a small token budget."""
    model = tiny_qwen(torch.float64, tied)
    batch = rollout_rows()
    forward = PolicyForward(model, output_head(model), temperature=temperature, max_tokens=24, chunk_tokens=5)
    split = forward.split(batch)
    assert len(split) > 2
    upstream = torch.randn(batch.response_ids.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for rows, mb in split:
        model.zero_grad(set_to_none=True)
        lp, ent = forward.logprobs(mb)
        (lp * upstream[rows, :lp.shape[1]]).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        ref_lp, ref_ent = full_logits_logprobs(model, mb, temperature)
        (torch.where(mb.response_mask, ref_lp, 0) * upstream[rows, :lp.shape[1]]).sum().backward()
        torch.testing.assert_close(lp, torch.where(mb.response_mask, ref_lp, 0), atol=1e-12, rtol=0)
        torch.testing.assert_close(ent, torch.where(mb.response_mask, ref_ent, 0), atol=1e-12, rtol=0)
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-12, rtol=0)
    full, _ = forward.token_logprobs(batch)
    ref, _ = full_logits_logprobs(model, batch, temperature)
    torch.testing.assert_close(full, torch.where(batch.response_mask, ref, 0).detach(), atol=1e-12, rtol=0)


def test_pooled_hidden_is_the_mean_final_hidden_state_of_the_response_tokens():
    model = tiny_qwen(torch.float64)
    batch = rollout_rows(seed=2)
    pooled = PolicyForward(model, output_head(model), max_tokens=30).pooled_hidden(batch)
    for row in range(len(batch)):
        tokens = torch.cat([batch.prompt_ids[row][batch.prompt_mask[row]],
                            batch.response_ids[row][batch.response_mask[row]]])
        with torch.no_grad():
            hidden = model(input_ids=tokens[None], output_hidden_states=True).hidden_states[-1][0]
        length = int(batch.response_mask[row].sum())
        torch.testing.assert_close(pooled[row].double(), hidden[-length:].mean(0), atol=1e-6, rtol=0)


def test_an_empty_micro_batch_runs_the_model_and_back_propagates_nothing():
    """A rank with fewer rows than the agreed number of micro-batches runs empty ones: the model is still called
    (FSDP's all-gathers, ZeRO's hooks) and its backward gives zero gradients."""
    model = tiny_qwen(torch.float32)
    batch = rollout_rows(rows=2)
    forward = PolicyForward(model, output_head(model), max_tokens=10_000, agree=lambda k: 3)
    split = forward.split(batch)
    assert [len(mb) for _, mb in split] == [1, 1, 0]
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    lp, _ = forward.logprobs(split[-1][1])
    assert lp.shape[0] == 0 and calls == [1] and lp.requires_grad
    lp.sum().backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)
    forward.agree = lambda k: k + 1  # CLIPO's pooled hidden states over a split with an empty micro-batch
    torch.testing.assert_close(forward.pooled_hidden(batch), PolicyForward(model, output_head(model)).pooled_hidden(
        batch))


def test_the_head_must_be_a_bias_free_linear():
    model = tiny_qwen(torch.float32)
    model.lm_head = torch.nn.Linear(32, V, bias=True)
    with pytest.raises(ValueError, match="bias-free"):
        output_head(model)


# --------------------------------------------------------------------------------------------- partition


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=0, max_size=40), budget=st.integers(300, 2000),
       extra=st.integers(0, 5))
def test_token_budget_partition(lengths, budget, extra):
    groups = token_budget_partition(lengths, budget)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))  # every row once
    assert all(len(g) * max(lengths[r] for r in g) <= budget for g in groups)  # within the budget
    widths = [[lengths[r] for r in g] for g in groups]
    assert all(w == sorted(w, reverse=True) for w in widths)  # grouped by length, longest first
    assert all(min(a) >= max(b) for a, b in zip(widths, widths[1:]))
    exact = token_budget_partition(lengths, budget, len(groups) + extra)
    assert len(exact) == len(groups) + extra
    assert sorted(r for g in exact for r in g) == list(range(len(lengths)))
    assert computed_positions(lengths, exact) <= computed_positions(lengths, groups)  # halving never adds padding


def test_a_row_longer_than_the_budget_gets_its_own_micro_batch_and_too_few_parts_are_refused():
    assert token_budget_partition([50, 10, 10], 40) == [[0], [1, 2]]
    with pytest.raises(ValueError, match="needs 2"):
        token_budget_partition([50, 10, 10], 40, parts=1)


def test_micro_batches_are_padded_to_their_own_widths():
    batch = rollout_rows(rows=9)
    for rows, mb in PolicyForward(tiny_qwen(torch.float32), None, max_tokens=20).split(batch):
        assert mb.prompt_ids.shape[1] == int(batch.prompt_mask[rows].sum(-1).max())
        assert mb.response_ids.shape[1] == int(batch.response_mask[rows].sum(-1).max())
        assert torch.equal(mb.response_ids, batch.response_ids[rows, :mb.response_ids.shape[1]])
