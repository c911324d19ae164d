"""The shared core on bad or unusual input: errors name the problem, documented cases are handled, no silent NaN."""

import pytest
import torch

from conspo import BatchError, RolloutBatch, available_objectives, build_objective
from conspo.losses import aggregate_tokens, conspo_group_objective, degenerate_fraction, group_advantages
from conspo.objective import objective_parameters


def batch_kwargs(n=4, T=5):
    return dict(
        response_ids=torch.zeros(n, T, dtype=torch.long),
        response_mask=torch.ones(n, T, dtype=torch.bool),
        old_logprobs=torch.full((n, T), -1.0),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0])[:n],
        group_ids=torch.zeros(n, dtype=torch.long),
    )


def test_valid_batch_infers_correct_from_binary_rewards():
    b = RolloutBatch.create(**batch_kwargs())
    assert b.correct.tolist() == [True, False, True, False]
    assert b.lengths.tolist() == [5.0] * 4


def test_mismatched_shapes_name_the_field():
    kw = batch_kwargs()
    kw["response_mask"] = torch.ones(4, 6, dtype=torch.bool)
    with pytest.raises(BatchError, match="response_mask has shape \\(4, 6\\)"):
        RolloutBatch.create(**kw)
    kw = batch_kwargs()
    kw["group_ids"] = torch.zeros(3, dtype=torch.long)
    with pytest.raises(BatchError, match="group_ids"):
        RolloutBatch.create(**kw)


def test_non_binary_rewards_need_a_threshold():
    kw = batch_kwargs()
    kw["rewards"] = torch.tensor([0.9, 0.0, 1.0, -0.2])
    with pytest.raises(BatchError, match="not binary at rows \\[0, 3\\]"):
        RolloutBatch.create(**kw)
    b = RolloutBatch.create(**kw, reward_threshold=0.5)
    assert b.correct.tolist() == [True, False, True, False]
    assert b.rewards[0] == pytest.approx(0.9)  # shaped rewards are kept as they are


def test_zero_length_responses_are_rejected_with_their_rows():
    kw = batch_kwargs()
    kw["response_mask"][2] = False
    with pytest.raises(BatchError, match="zero-length responses at rows \\[2\\]"):
        RolloutBatch.create(**kw)


def test_nan_logprobs_inside_the_mask_are_rejected_but_padding_may_hold_anything():
    kw = batch_kwargs()
    kw["response_mask"][1, 3:] = False
    kw["old_logprobs"][1, 4] = torch.nan  # padding: ignored
    RolloutBatch.create(**kw)
    kw["old_logprobs"][3, 0] = torch.nan
    with pytest.raises(BatchError, match="old_logprobs is NaN .* rows \\[3\\]"):
        RolloutBatch.create(**kw)


def test_float_group_ids_are_rejected():
    kw = batch_kwargs()
    kw["group_ids"] = torch.zeros(4)
    with pytest.raises(BatchError, match="group_ids must be integers"):
        RolloutBatch.create(**kw)


def test_unsorted_non_contiguous_group_ids_are_handled():
    s = torch.tensor([-1.0, -2.0, -1.5, -0.5, -3.0, -2.5])
    correct = torch.tensor([True, False, False, True, True, False])
    interleaved = torch.tensor([4, 9, 4, 9, 4, 9])
    contiguous_order = torch.tensor([0, 2, 4, 1, 3, 5])
    a = conspo_group_objective(s, correct, interleaved, 2.0, 0.0)
    b = conspo_group_objective(s[contiguous_order], correct[contiguous_order], interleaved[contiguous_order], 2.0, 0.0)
    torch.testing.assert_close(a, b)


def test_advantages_population_unbiased_and_no_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    pop = group_advantages(r, g, "population", eps=0.0)
    assert pop[0] == pytest.approx(0.75 / (0.1875**0.5))
    unb = group_advantages(r, g, "unbiased", eps=0.0)
    assert unb[0] == pytest.approx(0.75 / (0.25**0.5))
    assert group_advantages(r, g, "none").tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.0, 0.0])
    assert torch.equal(pop[4:], torch.zeros(2))  # an all-correct group has zero advantage, not NaN
    assert torch.equal(group_advantages(torch.tensor([1.0]), torch.tensor([0]), "unbiased"), torch.zeros(1))
    with pytest.raises(ValueError, match="std mode"):
        group_advantages(r, g, "sample")


def test_degenerate_fraction():
    correct = torch.tensor([True, True, False, True, False, False])
    assert degenerate_fraction(correct, torch.tensor([0, 0, 1, 1, 2, 2])) == pytest.approx(2 / 3)


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    assert float(aggregate_tokens(values, mask, "seq-mean-token-mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate_tokens(values, mask, "token-mean")) == pytest.approx(10.0 / 4)
    assert float(aggregate_tokens(values, mask, "seq-mean-token-sum-norm", 8.0)) == pytest.approx((6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="unknown token aggregation 'mean'"):
        aggregate_tokens(values, mask, "mean")
    with pytest.raises(ValueError, match="constant"):
        aggregate_tokens(values, mask, "seq-mean-token-sum-norm")


def test_registry_names_unknown_methods_and_keys():
    names = available_objectives()
    assert {"conspo", "grpo", "conspo_no_contrastive", "conspo_ratio_scores", "conspo_no_margin",
            "conspo_fixed_margin", "grpo_discriminative"} <= set(names)
    with pytest.raises(KeyError, match="unknown method 'conspoo'.*conspo"):
        build_objective("conspoo")
    with pytest.raises(KeyError, match="no parameter 'tauu'"):
        build_objective("conspo", {"tauu": 3})
    with pytest.raises(ValueError, match="^score: must be one of likelihood, clipped_ratio"):
        build_objective("conspo", {"score": "likelihoood"})


def test_presets_are_the_table6_switches():
    assert objective_parameters("conspo") == {
        "tau": 10.0, "margin_max": 0.01, "margin_warmup": 0.3, "margin_schedule": "cosine",
        "score": "likelihood", "contrastive": True, "clip_eps": 0.2,
    }
    assert objective_parameters("conspo_no_margin")["margin_max"] == 0.0
    assert objective_parameters("conspo_fixed_margin")["margin_schedule"] == "fixed"
    assert objective_parameters("conspo_ratio_scores")["score"] == "clipped_ratio"
    assert objective_parameters("conspo_no_contrastive")["contrastive"] is False
    fixed = build_objective("conspo_fixed_margin")
    assert fixed.margin(0.0) == fixed.margin(1.0) == 0.01
    assert build_objective("conspo").margin(0.0) == 0.0


def test_all_degenerate_batch_gives_zero_loss_and_zero_gradient():
    kw = batch_kwargs()
    kw["rewards"] = torch.ones(4)
    b = RolloutBatch.create(**kw)
    lp = torch.full((4, 5), -1.0, requires_grad=True)
    for name in ("conspo", "conspo_ratio_scores", "conspo_no_contrastive", "grpo"):
        obj = build_objective(name)
        bb = b.with_advantages(obj.advantages(b.rewards, b.group_ids))
        loss, metrics = obj.loss(obj.sequence_terms(bb, lp), bb.info, 0.5)
        (g,) = torch.autograd.grad(loss, lp)
        assert float(loss) == 0.0 and torch.equal(g, torch.zeros_like(g)), name
    assert metrics is not None
