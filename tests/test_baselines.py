"""The seven baselines against hand-computed values on small tensors and their defining properties, their exact
micro-batched gradients, and bad input (degenerate groups, empty responses, NaN log-probs)."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conspo import RolloutBatch, accumulate_gradients, build_objective
from conspo.objective import objective_parameters
from test_exact_gradients import TinyLM, accumulated_gradient, make_batch, reference_gradient

from baselines.gmpo import sign_aware_log_clip
from baselines.sapo import soft_gate

BASELINES = ["grpo", "dapo", "dr_grpo", "disco", "gmpo", "cispo", "sapo"]


# ------------------------------------------------------------------------------------------ a hand-sized example
# one group, rewards [1, 0]; row 0 has 2 tokens with ratios [1.5, 1], row 1 has 1 token with ratio 0.5.
OLD = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])
NEW = torch.tensor([[-1.0 + math.log(1.5), -1.0], [-2.0 + math.log(0.5), 0.0]])
MASK = torch.tensor([[True, True], [True, False]])


def hand_batch(old=OLD, mask=MASK, rewards=(1.0, 0.0), group_ids=None):
    n = len(rewards)
    return RolloutBatch.create(
        response_ids=torch.zeros(n, old.shape[1], dtype=torch.long),
        response_mask=mask,
        old_logprobs=old,
        rewards=torch.tensor(rewards),
        group_ids=torch.zeros(n, dtype=torch.long) if group_ids is None else torch.as_tensor(group_ids),
    )


def loss_and_grad(objective, batch, logprobs, progress=0.5):
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    leaf = logprobs.clone().requires_grad_(True)
    loss, metrics = objective.loss(objective.sequence_terms(batch, leaf), batch.info, progress)
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True, materialize_grads=True)
    return float(loss.detach()), grad, metrics


HAND_VALUES = [
    # GRPO, A = +-1: row 0 -min(1.5, 1.2), -1 -> mean -1.1; row 1 -min(-0.5, -0.8) = 0.8; seq-mean
    ("grpo", {"advantage_eps": 0.0}, (-1.1 + 0.8) / 2),
    # DAPO: clip-higher 1.28 on row 0's first token; token-mean over the 3 tokens
    ("dapo", {"advantage_eps": 0.0}, (-1.28 - 1.0 + 0.8) / 3),
    # Dr. GRPO, A = +-0.5, C = 4: row 0 (-0.6 - 0.5)/4, row 1 -min(-0.25, -0.4)/4 = 0.1
    ("dr_grpo", {"aggregation_constant": 4.0}, (-1.1 / 4 + 0.4 / 4) / 2),
    # CISPO: -sg(w) A log pi with w = [1.5, 1] (no cap reached) and 0.5; token-mean
    ("cispo", {"advantage_eps": 0.0}, 0.1817429158525936),
    # CISPO with the weight capped at 1.2
    ("cispo", {"advantage_eps": 0.0, "clip_eps_high": 0.2}, 0.12228942666340996),
    # SAPO: -[sig(0.5) 4, sig(0) 4] for A = 1 (tau 1); +sig(-0.525) 4 / 1.05 for A = -1; seq-mean
    ("sapo", {"advantage_eps": 0.0}, -0.4144901660501712),
    # GMPO: row 0 log-ratios [0.405, 0] -> upper clip 0.4 -> mean 0.2; row 1 -0.693 -> lower clip -0.4
    ("gmpo", {"advantage_eps": 0.0}, (-math.exp(0.2) + math.exp(-0.4)) / 2),
    # DisCO: s0 = mean(log 1.5 - 1, -1), s1 = log 0.5 - 2, J = s0 - 10 log exp(s1/10) = s0 - s1;
    # KL (k1, the default) token-mean = [-log 1.5 + 0 - log 0.5] / 3; loss = -J + 500 (KL - 1e-4)^2
    ("disco", {}, 2.692367796868233),
    # k3: [(0.5 - log 1.5) + 0 + (-0.5 + log 2)] / 3, here the same log(4/3) / 3
    ("disco", {"kl_estimator": "k3"}, 2.6923677968682296),
]


@pytest.mark.parametrize("name,params,expected", HAND_VALUES)
def test_hand_computed_values(name, params, expected):
    value, _, _ = loss_and_grad(build_objective(name, params), hand_batch(), NEW)
    assert value == pytest.approx(expected, rel=1e-5)


def test_defaults_are_the_methods_md_values():
    expected = {
        "grpo": {"clip_eps_low": 0.2, "clip_eps_high": 0.2, "kl_coef": 0.0, "aggregation": "seq-mean-token-mean"},
        "dapo": {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "kl_coef": 0.0, "aggregation": "token-mean"},
        "dr_grpo": {"advantage_std": "none", "aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.0},
        "disco": {"tau": 10.0, "delta": 1e-4, "beta": 1e3, "kl_estimator": "k1"},
        "gmpo": {"clip_eps_low": 0.4, "clip_eps_high": 0.4},
        "cispo": {"aggregation": "token-mean", "ratio_bound": "relative", "clip_eps_low": None, "clip_eps_high": 4.0},
        "sapo": {"tau_pos": 1.0, "tau_neg": 1.05, "aggregation": "seq-mean-token-mean"},
    }
    for name, values in expected.items():
        params = objective_parameters(name)
        assert {k: params[k] for k in values} == values, name
        assert not build_objective(name).needs_reference, name


def test_bad_parameters_are_refused_at_construction():
    with pytest.raises(ValueError, match="^ratio_bound: must be one of relative, absolute"):
        build_objective("cispo", {"ratio_bound": "relatve"})
    with pytest.raises(ValueError, match="^tau_neg: must be > 0"):
        build_objective("sapo", {"tau_neg": 0.0})
    with pytest.raises(ValueError, match="^tau: must be > 0"):
        build_objective("disco", {"tau": -1.0})
    with pytest.raises(ValueError, match="^kl_estimator: must be k1 or k3"):
        build_objective("disco", {"kl_estimator": "k2"})
    with pytest.raises(ValueError, match="^advantage_std"):
        build_objective("gmpo", {"advantage_std": "sample"})
    with pytest.raises(ValueError, match="^aggregation_constant: must be > 0"):
        build_objective("dr_grpo", {"aggregation_constant": None})


# ------------------------------------------------------------------------------------------ defining properties


@pytest.mark.parametrize("tau", [1.0, 1.05, 0.3, 5.0])
def test_sapo_gate_has_slope_one_and_value_two_over_tau_at_ratio_one(tau):
    ratio = torch.ones(1, dtype=torch.float64, requires_grad=True)
    value = soft_gate(ratio, torch.tensor(tau, dtype=torch.float64))
    (slope,) = torch.autograd.grad(value.sum(), ratio)
    assert float(slope) == pytest.approx(1.0, rel=1e-12)
    assert float(value.detach()) == pytest.approx(2.0 / tau, rel=1e-12)


@pytest.mark.parametrize("name", ["gmpo", "sapo", "cispo", "dapo"])
def test_on_policy_gradient_of_ratio_methods_is_the_policy_gradient(name):
    """On-policy (rho = 1) GMPO and SAPO have GRPO's gradient, CISPO has DAPO's (both token-mean)."""
    batch = make_batch(seed=5, off_policy=0.0)
    reference = "dapo" if name in ("cispo", "dapo") else "grpo"
    _, ref_grads = reference_gradient(build_objective(reference), batch, progress=0.0)
    _, grads = reference_gradient(build_objective(name), batch, progress=0.0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


def test_gmpo_and_grpo_agree_on_policy_in_value_too():
    batch = make_batch(seed=2, off_policy=0.0)
    grpo, _ = reference_gradient(build_objective("grpo"), batch, progress=0.0)
    gmpo, _ = reference_gradient(build_objective("gmpo"), batch, progress=0.0)
    assert gmpo == pytest.approx(grpo, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=12), st.sampled_from([-1.0, 0.0, 2.0]))
def test_gmpo_clip_only_bounds_the_side_that_helps_the_objective(log_ratios, advantage):
    d = torch.tensor(log_ratios, dtype=torch.float64)
    c = sign_aware_log_clip(d, torch.tensor(advantage), 0.4, 0.4)
    if advantage > 0:
        assert torch.equal(c, torch.clamp(d, max=0.4))  # A > 0: the ratio may not grow past e^0.4
    else:
        assert torch.equal(c, torch.clamp(d, min=-0.4))  # A <= 0: it may not shrink past e^-0.4


def test_cispo_gradient_flows_only_through_log_pi():
    """d loss / d log pi_t = -sg(clip(rho_t)) A / sum L exactly: the weight contributes no derivative of its own."""
    objective = build_objective("cispo", {"advantage_eps": 0.0, "clip_eps_high": 0.2})
    _, grad, _ = loss_and_grad(objective, hand_batch(), NEW)
    weight = torch.tensor([[1.2, 1.0], [0.5, 0.0]])  # clip(rho) with cap 1.2, padding 0
    advantages = torch.tensor([[1.0], [-1.0]])
    torch.testing.assert_close(grad, -weight * advantages / 3.0)


def test_dr_grpo_loss_does_not_change_when_a_response_is_padded():
    objective = build_objective("dr_grpo", {"aggregation_constant": 16.0})
    batch = make_batch(seed=4)
    logprobs = batch.old_logprobs + 0.1
    value, grad, _ = loss_and_grad(objective, batch, logprobs)
    pad = 5  # five more padding columns holding garbage
    padded = dataclasses.replace(
        batch,
        response_ids=torch.cat([batch.response_ids, torch.zeros(len(batch), pad, dtype=torch.long)], 1),
        response_mask=torch.cat([batch.response_mask, torch.zeros(len(batch), pad, dtype=torch.bool)], 1),
        old_logprobs=torch.cat([batch.old_logprobs, torch.full((len(batch), pad), 7.0)], 1),
    )
    padded_value, padded_grad, _ = loss_and_grad(objective, padded, torch.cat([logprobs, torch.randn(len(batch), pad)], 1))
    assert padded_value == pytest.approx(value, abs=1e-7)
    torch.testing.assert_close(padded_grad[:, : logprobs.shape[1]], grad)
    assert torch.equal(padded_grad[:, logprobs.shape[1] :], torch.zeros(len(batch), pad))


def test_dr_grpo_token_weight_does_not_depend_on_the_response_length():
    """On-policy the gradient on each token is -A_i / (N C), whatever L_i (no length bias); GRPO's is -A_i/(N L_i)."""
    objective = build_objective("dr_grpo", {"aggregation_constant": 10.0})
    batch = hand_batch()
    _, grad, _ = loss_and_grad(objective, batch, OLD)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]) / (2 * 10.0))


def test_disco_penalty_is_zero_inside_the_trust_region_and_hinged_outside():
    objective = build_objective("disco")
    batch = hand_batch()
    inside = OLD - 5e-5  # k1 KL = 5e-5 < delta = 1e-4
    _, grad_inside, metrics = loss_and_grad(objective, batch, inside)
    assert 0 < metrics["kl"] < objective.delta and metrics["kl_penalty"] == 0.0
    _, grad_no_penalty, _ = loss_and_grad(build_objective("disco", {"beta": 0.0}), batch, inside)
    torch.testing.assert_close(grad_inside, grad_no_penalty)
    # outside: d loss / d (sum_t KL_t of row i) = beta [KL - delta]_+ / sum L  (the released code's update)
    terms = objective.sequence_terms(batch, NEW).detach().requires_grad_(True)
    loss, metrics = objective.loss(terms, batch.info, 0.0)
    (coeff,) = torch.autograd.grad(loss, terms)
    expected = objective.beta * (metrics["kl"] - objective.delta) / 3.0
    torch.testing.assert_close(coeff[:, 1], torch.full((2,), expected))


def test_disco_group_objective_uses_only_its_own_group_and_ignores_degenerate_ones():
    scores = torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.7])
    batch = hand_batch(old=torch.zeros(5, 1), mask=torch.ones(5, 1, dtype=torch.bool),
                       rewards=(1.0, 0.0, 0.0, 1.0, 1.0), group_ids=[3, 3, 3, 8, 8])
    objective = build_objective("disco")
    loss, metrics = objective.loss(torch.stack([scores, torch.zeros(5)], -1), batch.info, 0.0)
    j = -1.0 - 10 * math.log(math.exp(-0.2) + math.exp(-0.3))
    assert float(loss) == pytest.approx(-j / 2)  # group 8 (all correct) contributes 0 to the mean over 2 groups
    assert metrics["degenerate_groups"] == 0.5


# ------------------------------------------------------------------------------------------ exact gradients


@pytest.mark.parametrize("name", ["disco", "gmpo", "dapo", "dr_grpo", "cispo", "sapo"])
@pytest.mark.parametrize("micro_batch_size", [2, 7, 1000])
def test_micro_batching_gives_the_whole_batch_gradient(name, micro_batch_size):
    objective = build_objective(name, {"aggregation_constant": 6.0} if name == "dr_grpo" else {})
    batch = make_batch(seed=11)
    ref_loss, ref_grads = reference_gradient(objective, batch, progress=0.3)
    loss, grads = accumulated_gradient(objective, batch, 0.3, micro_batch_size)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)


def test_disco_gradient_does_not_depend_on_row_order_and_sees_the_penalty():
    objective = build_objective("disco")
    batch = make_batch(seed=3)
    _, ref_grads = reference_gradient(objective, batch, progress=0.0)
    shuffled = batch.select(torch.randperm(len(batch), generator=torch.Generator().manual_seed(1)))
    _, grads = accumulated_gradient(objective, shuffled, 0.0, micro_batch_size=4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)
    _, no_penalty = reference_gradient(build_objective("disco", {"beta": 0.0}), batch, progress=0.0)
    assert any(not torch.allclose(g, r) for g, r in zip(ref_grads, no_penalty))  # off-policy: the hinge is active


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", BASELINES)
def test_all_degenerate_batch_gives_zero_loss_and_zero_gradient_on_policy(name):
    objective = build_objective(name)
    batch = hand_batch(old=OLD, rewards=(1.0, 1.0))
    value, grad, _ = loss_and_grad(objective, batch, OLD)
    assert value == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", BASELINES)
def test_nan_logprobs_are_refused_not_propagated(name):
    objective = build_objective(name)
    batch = make_batch(seed=1)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    model = TinyLM(seed=123)

    def poisoned(mb):
        return model.response_logprobs(mb) + torch.where(torch.arange(len(mb))[:, None] == 0, torch.nan, 0.0)

    with pytest.raises(FloatingPointError, match="non-finite"):
        accumulate_gradients(objective, batch, poisoned, micro_batch_size=8, progress=0.0)


@pytest.mark.parametrize("name", BASELINES)
def test_empty_response_is_rejected_by_the_batch_and_harmless_to_the_objective(name):
    with pytest.raises(Exception, match="zero-length responses"):
        hand_batch(mask=torch.tensor([[True, True], [False, False]]))
    # a row that slipped past validation still gives a finite loss and gradient
    batch = dataclasses.replace(hand_batch(), response_mask=torch.tensor([[True, True], [False, False]]))
    value, grad, _ = loss_and_grad(build_objective(name), batch, NEW)
    assert math.isfinite(value) and bool(torch.isfinite(grad).all())
    assert torch.equal(grad[1], torch.zeros(2))
