"""ConSPO against the paper's own identities: Lemma 2 (Eq. 12), the balance relation (Eq. 13), the negative-side
ratio (Eq. 14), the margin schedule (Eq. 16) and Proposition 1 / Lemma 1 (GRPO == Eq. 8 with clipped scores)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conspo import RolloutBatch, build_objective
from conspo.losses import (
    clipped_ratio_scores,
    conspo_group_objective,
    contrastive_probabilities,
    discriminative_group_objective,
    group_advantages,
    margin_at,
    sequence_scores,
)



@pytest.fixture(autouse=True)
def float64():
    """The identities are checked in double precision; restore the default for the other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@st.composite
def groups_of_rollouts(draw, min_groups=1, max_groups=5, mixed=True):
    """Random groups of varied sizes with binary correctness; `mixed` forces >=1 correct and >=1 incorrect each."""
    n_groups = draw(st.integers(min_groups, max_groups))
    correct, group_ids = [], []
    for g in range(n_groups):
        size = draw(st.integers(2, 9))
        flags = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        if mixed:
            flags[0], flags[-1] = True, False
        correct += flags
        group_ids += [g * 3 + 1] * size  # ids need not be 0..G-1
    n = len(correct)
    scores = draw(st.lists(st.floats(-5.0, 0.0), min_size=n, max_size=n))
    tau = draw(st.sampled_from([0.5, 1.0, 2.0, 10.0, 20.0]))
    margin = draw(st.sampled_from([0.0, 0.005, 0.01, 0.3]))
    return (
        torch.tensor(scores, requires_grad=True),
        torch.tensor(correct),
        torch.tensor(group_ids),
        tau,
        margin,
    )


def lemma2_gradient(scores, correct, group_ids, tau, margin):
    """Eq. 12 written out directly: d J / d s_i+ = (1/N+)(1 - P_i+),  d J / d s_j- = -(1/N+) sum_i P_ij-."""
    s = scores.detach()
    grad = torch.zeros_like(s)
    for g in group_ids.unique():
        rows = (group_ids == g).nonzero().flatten().tolist()
        pos = [i for i in rows if correct[i]]
        neg = [j for j in rows if not correct[j]]
        if not pos or not neg:
            continue
        for i in pos:
            denom = math.exp((s[i] - margin) / tau) + sum(math.exp(s[j] / tau) for j in neg)
            p_pos = math.exp((s[i] - margin) / tau) / denom
            grad[i] += (1 - p_pos) / len(pos)
            for j in neg:
                grad[j] -= (math.exp(s[j] / tau) / denom) / len(pos)
    return grad


@settings(max_examples=150, deadline=None)
@given(groups_of_rollouts())
def test_autograd_matches_lemma2_eq12(case):
    scores, correct, group_ids, tau, margin = case
    conspo_group_objective(scores, correct, group_ids, tau, margin).sum().backward()
    torch.testing.assert_close(scores.grad, lemma2_gradient(scores, correct, group_ids, tau, margin))


@settings(max_examples=150, deadline=None)
@given(groups_of_rollouts(mixed=False))
def test_group_derivatives_sum_to_zero_eq13(case):
    scores, correct, group_ids, tau, margin = case
    conspo_group_objective(scores, correct, group_ids, tau, margin).sum().backward()
    per_group = torch.zeros(int(group_ids.max()) + 1).index_add(0, group_ids, scores.grad)
    torch.testing.assert_close(per_group, torch.zeros_like(per_group), atol=1e-12, rtol=0)


@settings(max_examples=150, deadline=None)
@given(groups_of_rollouts())
def test_negative_side_ratio_eq14(case):
    scores, correct, group_ids, tau, margin = case
    conspo_group_objective(scores, correct, group_ids, tau, margin).sum().backward()
    s, g = scores.detach(), scores.grad
    for gid in group_ids.unique():
        neg = ((group_ids == gid) & ~correct).nonzero().flatten().tolist()
        for j in neg:
            for k in neg:
                assert g[j] < 0
                assert math.isclose(g[j] / g[k], math.exp((s[j] - s[k]) / tau), rel_tol=1e-9)


@settings(max_examples=100, deadline=None)
@given(groups_of_rollouts())
def test_contrastive_probabilities_are_the_positive_coefficients(case):
    scores, correct, group_ids, tau, margin = case
    p = contrastive_probabilities(scores.detach(), correct, group_ids, tau, margin)
    conspo_group_objective(scores, correct, group_ids, tau, margin).sum().backward()
    n_pos = torch.zeros(int(group_ids.max()) + 1).index_add(0, group_ids, correct.double())[group_ids]
    torch.testing.assert_close(scores.grad[correct], ((1 - p) / n_pos)[correct])
    assert torch.isnan(p[~correct]).all()


def test_eq15_on_a_hand_computed_group():
    s = torch.tensor([-0.5, -1.0, -2.0])  # one positive, two negatives
    correct = torch.tensor([True, False, False])
    tau, m = 2.0, 0.1
    expected = tau * math.log(
        math.exp((-0.5 - m) / tau) / (math.exp((-0.5 - m) / tau) + math.exp(-1.0 / tau) + math.exp(-2.0 / tau))
    )
    got = conspo_group_objective(s, correct, torch.zeros(3, dtype=torch.long), tau, m)
    assert got.shape == (1,)
    assert math.isclose(float(got[0]), expected, rel_tol=1e-12)


def test_one_value_per_group_in_ascending_id_order():
    s = torch.tensor([-1.0, -2.0, -1.0, -3.0, -0.5, -0.7])
    correct = torch.tensor([True, False, True, False, True, True])
    ids = torch.tensor([7, 7, 2, 2, 5, 5])  # group 5 is all-correct
    out = conspo_group_objective(s, correct, ids, 1.0, 0.0)
    alone_2 = conspo_group_objective(s[2:4], correct[2:4], ids[2:4], 1.0, 0.0)
    alone_7 = conspo_group_objective(s[:2], correct[:2], ids[:2], 1.0, 0.0)
    torch.testing.assert_close(out, torch.stack([alone_2[0], torch.tensor(0.0), alone_7[0]]))


def test_large_score_gaps_stay_finite():
    s = torch.tensor([0.0, -500.0, -1000.0, 0.0], requires_grad=True)
    correct = torch.tensor([True, False, False, True])
    J = conspo_group_objective(s, correct, torch.tensor([0, 0, 0, 1]), 0.5, 0.0)
    J.sum().backward()
    assert torch.isfinite(J).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("flags", [[True] * 4, [False] * 4])
def test_degenerate_groups_give_zero_objective_and_zero_gradient(flags):
    s = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    J = conspo_group_objective(s, torch.tensor(flags), torch.zeros(4, dtype=torch.long), 10.0, 0.01)
    J.sum().backward()
    assert float(J) == 0.0
    assert torch.equal(s.grad, torch.zeros(4))
    s.grad = None
    D = discriminative_group_objective(s, s, torch.tensor(flags), torch.zeros(4, dtype=torch.long))
    D.sum().backward()
    assert float(D) == 0.0 and torch.equal(s.grad, torch.zeros(4))


# ------------------------------------------------------------------------------------------------- Eq. 16


@pytest.mark.parametrize("M,alpha", [(0.01, 0.3), (0.05, 0.1), (0.02, 1.0), (0.0, 0.5)])
def test_margin_schedule_eq16(M, alpha):
    assert margin_at(0.0, M, alpha) == 0.0
    assert math.isclose(margin_at(alpha / 2, M, alpha), M / 2, abs_tol=1e-15)
    assert math.isclose(margin_at(alpha, M, alpha), M, abs_tol=1e-15)
    assert math.isclose(margin_at(1.0, M, alpha), M, abs_tol=1e-15)


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1.0))
def test_margin_is_monotone_and_bounded(a, b, alpha):
    lo, hi = sorted((a, b))
    assert 0.0 <= margin_at(lo, 0.01, alpha) <= margin_at(hi, 0.01, alpha) <= 0.01 + 1e-15


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_margin_rejects_progress_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="progress"):
        margin_at(bad, 0.01, 0.3)


# ------------------------------------------------------------------------------------------- Proposition 1


def _random_group_batch(gen, group_sizes, T=7):
    n = sum(group_sizes)
    correct = torch.cat([torch.tensor([True, False] + [bool(x) for x in torch.randint(0, 2, (g - 2,), generator=gen)])
                         for g in group_sizes])
    group_ids = torch.cat([torch.full((g,), i) for i, g in enumerate(group_sizes)])
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(n, T, generator=gen) * 3
    batch = RolloutBatch.create(
        response_ids=torch.randint(0, 50, (n, T), generator=gen),
        response_mask=mask,
        old_logprobs=old,
        rewards=correct.double(),
        group_ids=group_ids,
    )
    # current log-probs off-policy enough that both clip boundaries are active
    logprobs = (old + torch.randn(n, T, generator=gen) * 0.4).requires_grad_(True)
    return batch, logprobs


@pytest.mark.parametrize("seed", range(5))
def test_proposition1_grpo_equals_discriminative_form(seed):
    gen = torch.Generator().manual_seed(seed)
    G = 8
    batch, logprobs = _random_group_batch(gen, [G] * 6)
    adv = group_advantages(batch.rewards, batch.group_ids, std="population", eps=0.0)
    batch = batch.with_advantages(adv)

    grpo = build_objective("grpo", {"advantage_eps": 0.0})
    terms = grpo.sequence_terms(batch, logprobs)
    grpo_loss, _ = grpo.loss(terms, batch.info, 0.0)
    (g_grpo,) = torch.autograd.grad(grpo_loss, logprobs)

    s_pos, s_neg = clipped_ratio_scores(logprobs, batch.old_logprobs, batch.response_mask, eps=0.2)
    J = discriminative_group_objective(s_pos, s_neg, batch.correct, batch.group_ids)  # Eq. 8 per group
    (g_eq8,) = torch.autograd.grad(-J.mean(), logprobs)
    torch.testing.assert_close(grpo_loss, -J.mean())
    torch.testing.assert_close(g_grpo, g_eq8)

    disc = build_objective("grpo_discriminative")
    d_loss, _ = disc.loss(disc.sequence_terms(batch, logprobs), batch.info, 0.3)
    torch.testing.assert_close(d_loss, grpo_loss)


def test_sequence_scores_are_length_normalised_logprobs():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    torch.testing.assert_close(sequence_scores(lp, mask), torch.tensor([-2.0, -4.0]))


def test_clipped_ratio_scores_eq7():
    old = torch.zeros(1, 3)
    lp = torch.log(torch.tensor([[0.5, 1.1, 1.5]]))
    mask = torch.ones(1, 3, dtype=torch.bool)
    s_pos, s_neg = clipped_ratio_scores(lp, old, mask, eps=0.2)
    torch.testing.assert_close(s_pos, torch.tensor([(0.5 + 1.1 + 1.2) / 3]))
    torch.testing.assert_close(s_neg, torch.tensor([(0.8 + 1.1 + 1.5) / 3]))
