"""CLIPO and CEPO (beyond the paper, docs/beyond_paper.md): their defining properties on synthetic groups and on a
tiny character-level Qwen2 policy."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.cepo import ADVANTAGE_SIGN, WEIGHTS, spliced_prompts, worst_rejected
from baselines.clipo import infonce_losses, pooled_response_hidden, sample_positives
from benchmarks.bench_methods import CharTokenizer, policy_context, policy_forward, tiny_policy, tiny_rollouts
from conspo.batch import RolloutBatch
from conspo.objective import RolloutContext, accumulate_gradients, build_objective, objective_parameters


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_policy(tokenizer, hidden=64)


# ------------------------------------------------------------------------------------------------- CLIPO


def synthetic_context(hidden: torch.Tensor, step: int = 0) -> RolloutContext:
    """A context whose 'policy' returns fixed hidden states per row (constant over tokens); rows are identified by
    their first response token, which holds the row index."""

    def response_hidden(prompt_ids, prompt_mask, response_ids, response_mask):
        return hidden[response_ids[:, 0]][:, None, :].expand(-1, response_ids.shape[1], -1)

    return RolloutContext(response_logprobs=None, response_hidden=response_hidden, tokenizer=None, answers=[],
                          responses=[], step=step, micro_batch_size=5)


def synthetic_batch(correct: list[list[bool]]) -> RolloutBatch:
    flat = [c for group in correct for c in group]
    n = len(flat)
    return RolloutBatch.create(
        prompt_ids=torch.ones(n, 2, dtype=torch.long), response_ids=torch.arange(n)[:, None].repeat(1, 3),
        response_mask=torch.ones(n, 3, dtype=torch.bool), old_logprobs=torch.full((n, 3), -1.0),
        rewards=torch.tensor(flat, dtype=torch.float32),
        group_ids=torch.tensor([g for g, group in enumerate(correct) for _ in group]),
    )


groups_strategy = st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(correct=groups_strategy, seed=st.integers(0, 2**16), scale=st.floats(0.1, 100.0))
def test_clipo_correct_rewards_stay_above_incorrect_and_unusable_groups_are_untouched(correct, seed, scale):
    batch = synthetic_batch(correct)
    hidden = torch.randn(len(batch), 16, generator=torch.Generator().manual_seed(seed)) * scale
    clipo = build_objective("clipo", {"head_dim": 32, "head_warmup_steps": 0, "seed": seed})
    shaped = clipo.prepare(batch, synthetic_context(hidden)).rewards
    for g, group in enumerate(correct):
        rows = batch.group_ids == g
        if sum(group) >= 2 and len(group) - sum(group) >= 1:
            assert shaped[rows & batch.correct].min() >= 0.5
            assert shaped[rows & batch.correct].min() > shaped[rows & ~batch.correct].max()
            assert torch.equal(shaped[rows & ~batch.correct], batch.rewards[rows & ~batch.correct])
        else:  # fewer than two correct or no incorrect rollout: no shaping
            assert torch.equal(shaped[rows], batch.rewards[rows])


def test_clipo_unusable_groups_give_no_head_update():
    batch = synthetic_batch([[True, False, False], [True, True, True], [False, False]])
    clipo = build_objective("clipo", {"head_warmup_steps": 0})
    assert torch.equal(clipo.prepare(batch, synthetic_context(torch.randn(len(batch), 8))).rewards, batch.rewards)
    assert clipo.head is None and clipo.prepare_metrics["clipo/usable_groups"] == 0.0


class OtherRankGathers:
    """Rank `rank` of two, whose peer holds `peer`: gather concatenates the rows in rank order, call by call."""

    world_size = 2

    def __init__(self, rank: int, peer: list[torch.Tensor]):
        self.rank, self.peer = rank, list(peer)

    def gather(self, tensor):
        other = self.peer.pop(0)
        parts = [tensor, other] if self.rank == 0 else [other, tensor]
        return torch.cat(parts), 0 if self.rank == 0 else len(other)


def test_clipo_on_two_ranks_equals_one_rank_on_the_whole_batch():
    batch = synthetic_batch([[True, True, False, True], [True, False, True], [True, True, True, False, False]])
    hidden = torch.randn(len(batch), 8, generator=torch.Generator().manual_seed(3))
    params = {"head_dim": 16, "head_warmup_steps": 0}
    whole = build_objective("clipo", params)
    expected = whole.prepare(batch, synthetic_context(hidden)).rewards
    halves = [batch.select(torch.arange(7)), batch.select(torch.arange(7, len(batch)))]  # whole groups per rank
    sent = [[pooled_response_hidden(half, synthetic_context(hidden)), half.correct.float(), half.group_ids]
            for half in halves]
    for rank, half in enumerate(halves):
        clipo = build_objective("clipo", params)
        context = synthetic_context(hidden)
        context.collective = OtherRankGathers(rank, sent[1 - rank])
        assert torch.equal(clipo.prepare(half, context).rewards, expected[:7] if rank == 0 else expected[7:])
        assert torch.equal(clipo.head.weight, whole.head.weight)


def test_clipo_infonce_matches_its_definition():
    z = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    groups = torch.tensor([0, 0, 0, 1, 1])
    positives = torch.tensor([1, 0, 0, 4, 3])
    losses = infonce_losses(z, positives, groups, 0.05)
    sim = z @ z.T / 0.05
    expected = -sim[0, 1] + torch.logsumexp(sim[0, [1, 2]], 0)
    assert torch.allclose(losses[0], expected) and bool((losses >= -1e-6).all())
    drawn = sample_positives(torch.tensor([True, True, False, True, False]), groups, torch.Generator().manual_seed(0))
    assert drawn.tolist()[:2] == [1, 0] and drawn[3] == 3  # row 3 has no other correct rollout: itself


def test_clipo_head_learns_on_separable_hidden_states():
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch([[True, True, False, False, False, False]] * 4)
    # correctness is one direction of 32 (+3 / -3), hidden under noise of sd 2 in every direction
    hidden = 2.0 * torch.randn(len(batch), 32, generator=generator)
    hidden[:, 0] += torch.where(batch.correct, 3.0, -3.0)
    clipo = build_objective("clipo", {"head_dim": 64, "head_warmup_steps": 3})
    losses, rewards = [], []
    for step in range(8):
        with torch.no_grad():  # a trainer may call prepare without grad: the head must train regardless
            rewards.append(clipo.prepare(batch, synthetic_context(hidden, step)).rewards)
        losses.append(clipo.prepare_metrics["clipo/head_loss"])
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(r, batch.rewards) for r in rewards[:3])  # warm-up: the head trains, rewards unshaped
    assert not torch.equal(rewards[3], batch.rewards)


def test_clipo_state_dict_round_trip_continues_identically():
    batch = synthetic_batch([[True, True, False, True]] * 2)
    hidden = torch.randn(len(batch), 8, generator=torch.Generator().manual_seed(1))
    first = build_objective("clipo", {"head_dim": 16, "head_warmup_steps": 0})
    first.prepare(batch, synthetic_context(hidden))
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # what the trainer does with each checkpoint
    second = build_objective("clipo", {"head_dim": 16, "head_warmup_steps": 0, "seed": 7})
    second.load_state_dict(torch.load(io.BytesIO(saved.getvalue())))
    assert torch.equal(first.prepare(batch, synthetic_context(hidden)).rewards,
                       second.prepare(batch, synthetic_context(hidden)).rewards)
    assert torch.equal(first.head.weight, second.head.weight)


def test_clipo_delegates_to_its_base_method(model, tokenizer):
    batch, answers, responses = tiny_rollouts(model, tokenizer, [[True, False, True, True], [False] * 4])
    clipo = build_objective("clipo", {"base_method": "grpo", "base_params": {"clip_eps_high": 0.28},
                                      "head_warmup_steps": 0, "head_dim": 16})
    shaped = clipo.prepare(batch, policy_context(model, tokenizer, answers, responses))
    assert clipo.linear and clipo.n_terms == 2
    base = build_objective("grpo", {"clip_eps_high": 0.28})
    shaped = shaped.with_advantages(clipo.advantages(shaped.rewards, shaped.group_ids))
    assert torch.equal(shaped.advantages, base.advantages(shaped.rewards, shaped.group_ids))
    assert shaped.rewards[0] < 1.0 and shaped.rewards[0] >= 0.5


# ------------------------------------------------------------------------------------------------- CEPO


def logprob_fn(model):
    return lambda mb: policy_forward(model, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)[0]


def loss_and_grads(objective, batch, model):
    model.zero_grad(set_to_none=True)
    loss, _ = accumulate_gradients(objective, batch, logprob_fn(model), micro_batch_size=3, progress=0.0)
    return loss, [p.grad.clone() for p in model.parameters()]


def prepared(objective, batch, context):
    batch = objective.prepare(batch, context)
    return batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))


def test_cepo_without_rejected_rollouts_is_the_clipped_surrogate(model, tokenizer):
    batch, answers, responses = tiny_rollouts(model, tokenizer, [[True] * 4, [True] * 3])
    calls = []
    context = policy_context(model, tokenizer, answers, responses)
    context.response_logprobs = lambda *rows: calls.append(rows)  # no rejected rollout: no teacher pass needed
    cepo = build_objective("cepo")
    batch = prepared(cepo, batch, context)
    assert calls == [] and bool((batch.extras[WEIGHTS] == 1).all())
    # all-correct groups have A = 0; give them a non-zero advantage to compare gradients that are not zero
    batch = batch.with_advantages(torch.linspace(-1, 1, len(batch)))
    batch.extras[ADVANTAGE_SIGN] = torch.sign(batch.advantages)
    base = build_objective("grpo", {"clip_eps_high": 0.28})
    loss, grads = loss_and_grads(cepo, batch, model)
    base_loss, base_grads = loss_and_grads(base, batch, model)
    assert loss == base_loss and all(torch.equal(a, b) for a, b in zip(grads, base_grads))


def test_cepo_weights_bounds_and_no_gradient_through_teacher_passes(model, tokenizer):
    batch, answers, responses = tiny_rollouts(model, tokenizer, [[True, False, True, False], [False, True, False],
                                                                 [True, True]])
    context = policy_context(model, tokenizer, answers, responses)
    teacher_outputs = []

    def differentiable_teacher(*rows):  # a context that forgets no_grad: CEPO itself must stop the gradient
        out = policy_forward(model, *rows)[0]
        teacher_outputs.append(out)
        return out

    context.response_logprobs = differentiable_teacher
    cepo = build_objective("cepo", {"lambda_init": 0.7, "warmup_steps": 10, "eps_w": 0.2})
    context.step = 3
    batch = prepared(cepo, batch, context)
    lam = 0.7 * (1 - 3 / 10)
    weights = batch.extras[WEIGHTS][batch.response_mask]
    assert teacher_outputs and not any(t.requires_grad for t in teacher_outputs)  # the passes ran under no_grad
    assert not batch.extras[WEIGHTS].requires_grad
    assert bool((weights >= 1 - lam * 0.2 - 1e-6).all()) and bool((weights <= 1 + lam * 0.2 + 1e-6).all())
    assert bool((weights != 1).any())
    assert bool((batch.extras[WEIGHTS][batch.group_ids == 2] == 1).all())  # the group without a rejected rollout
    # the loss gradient equals the clipped surrogate's with the token advantages held fixed
    model.zero_grad(set_to_none=True)
    loss, grads = loss_and_grads(cepo, batch, model)
    fixed = cepo.token_advantages(batch, batch.old_logprobs).detach()
    model.zero_grad(set_to_none=True)
    logprobs = logprob_fn(model)(batch)
    ratio = torch.exp(logprobs - batch.old_logprobs)
    token = -torch.minimum(ratio * fixed, torch.clamp(ratio, 0.8, 1.28) * fixed)
    manual = ((token * batch.response_mask).sum(-1) / batch.lengths).mean()
    manual.backward()
    assert torch.allclose(torch.tensor(loss), manual.detach(), atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))


def test_cepo_lambda_schedule_and_skip_after_warmup(model, tokenizer):
    cepo = build_objective("cepo")
    assert [cepo.evidence_lambda(s) for s in (0, 5, 25, 40)] == [1.0, 0.8, 0.0, 0.0]
    batch, answers, responses = tiny_rollouts(model, tokenizer, [[True, False, False]])
    context = policy_context(model, tokenizer, answers, responses, step=25)
    context.response_logprobs = lambda *rows: pytest.fail("no teacher pass once lambda is 0")
    assert bool((cepo.prepare(batch, context).extras[WEIGHTS] == 1).all())


def test_cepo_spliced_prompts_hold_the_right_answers(model, tokenizer):
    batch, answers, responses = tiny_rollouts(model, tokenizer, [[True, False, False, True], [False, False, True]])
    worst = worst_rejected(batch)
    for row in range(len(batch)):
        rejected = (batch.group_ids == batch.group_ids[row]) & ~batch.correct
        scores = (batch.old_logprobs * batch.response_mask).sum(-1) / batch.lengths
        assert worst[row] == torch.nonzero(rejected).flatten()[scores[rejected].argmin()]
    cepo = build_objective("cepo", {"answer_hint": " (answer: {answer})"})
    recorded = []
    context = policy_context(model, tokenizer, answers, responses)
    context.response_logprobs = lambda p, m, r, rm: recorded.append((p, m)) or torch.zeros(r.shape)
    context.micro_batch_size = 100
    cepo.prepare(batch, context)
    (pos_ids, pos_mask), (neg_ids, neg_mask) = recorded
    for row in range(len(batch)):
        prompt = tokenizer.decode(batch.prompt_ids[row][batch.prompt_mask[row]].tolist())
        wrong = responses[worst[row]].split("\\boxed{")[1].rstrip("}")
        assert tokenizer.decode(pos_ids[row][pos_mask[row]].tolist()) == f"{prompt} (answer: {answers[row]})"
        assert tokenizer.decode(neg_ids[row][neg_mask[row]].tolist()) == f"{prompt} (answer: {wrong})"
        assert bool(pos_mask[row, -1]) and not bool(pos_mask[row][: int((~pos_mask[row]).sum())].any())  # left-padded
    ids, mask = spliced_prompts(batch, [[5]] * len(batch))
    assert ids.shape[1] == batch.prompt_ids.shape[1] + 1 and bool((ids[:, -1] == 5).all())


def test_defaults_are_the_published_values():
    clipo, cepo = objective_parameters("clipo"), objective_parameters("cepo")
    assert {k: clipo[k] for k in ("base_method", "head_dim", "temperature", "reward_lambda", "max_penalty", "head_lr")} \
        == {"base_method": "grpo", "head_dim": 2048, "temperature": 0.05, "reward_lambda": 0.2, "max_penalty": 0.5,
            "head_lr": 1e-3}
    assert {k: cepo[k] for k in ("clip_eps_low", "clip_eps_high", "lambda_init", "eps_w", "kl_coef")} \
        == {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "lambda_init": 1.0, "eps_w": 0.2, "kl_coef": 0.0}
    assert build_objective("clipo").base.name == "grpo"
    with pytest.raises(ValueError, match="^base_method: unknown method 'grpoo'"):
        build_objective("clipo", {"base_method": "grpoo"})
