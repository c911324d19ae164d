"""DAPO's non-loss pieces in conspo.shaping: the dynamic-sampling group filter and loop, overlong reward shaping."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conspo.shaping import DynamicSampling, OverlongShaping, informative_groups


def test_filter_keeps_groups_whose_rewards_differ_and_counts_the_dropped():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.7])
    group_ids = torch.tensor([4, 4, 9, 9, 2, 2, 7, 7])  # any ids, any order
    result = informative_groups(rewards, group_ids)
    assert result.keep.tolist() == [False, False, True, True, False, False, True, True]
    assert result.kept_groups.tolist() == [7, 9]
    assert (result.n_groups, result.n_dropped) == (4, 2)


def test_filter_refuses_nan_rewards():
    with pytest.raises(ValueError, match="NaN"):
        informative_groups(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


def test_dynamic_sampling_fills_the_batch_and_drops_the_surplus():
    sampler = DynamicSampling(target_groups=3, max_extra_rounds=3)
    rounds = [
        (torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])),  # group 1 informative
        (torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([2, 2, 3, 3])),  # nothing
        (torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]), torch.tensor([4, 4, 5, 5, 6, 6])),  # 3 informative, 2 needed
    ]
    keeps = []
    for rewards, group_ids in rounds:
        assert sampler.wants_more()
        keeps.append(sampler.add(rewards, group_ids).tolist())
    assert not sampler.wants_more()
    assert keeps == [[False, False, True, True], [False] * 4, [True, True, True, True, False, False]]
    assert sampler.kept_ids == [1, 4, 5]
    metrics = sampler.metrics()
    assert metrics["dynamic_sampling/rounds"] == 3 and metrics["dynamic_sampling/dropped_groups"] == 3
    assert metrics["dynamic_sampling/shortfall"] == 0
    with pytest.raises(RuntimeError, match="stop generating"):
        sampler.add(*rounds[0])


def test_dynamic_sampling_stops_at_the_round_cap_and_reports_the_shortfall():
    sampler = DynamicSampling(target_groups=4, max_extra_rounds=1)
    for _ in range(2):
        sampler.add(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert not sampler.wants_more()
    assert sampler.metrics()["dynamic_sampling/shortfall"] == 2
    with pytest.raises(ValueError, match="target_groups"):
        DynamicSampling(target_groups=0)
    with pytest.raises(ValueError, match="max_extra_rounds"):
        DynamicSampling(target_groups=2, max_extra_rounds=-1)


def test_overlong_shaping_hand_values():
    shaping = OverlongShaping(buffer=4, penalty=0.5)
    lengths = torch.tensor([3, 6, 7, 8, 10, 12])  # L_max = 10: no penalty up to 6, linear to -1 at 10
    shaped = shaping(torch.ones(6), lengths, max_length=10)
    assert shaped.tolist() == pytest.approx([1.0, 1.0, 1 - 0.5 * 0.25, 1 - 0.5 * 0.5, 0.5, 0.5])


def test_overlong_shaping_bad_sizes_say_what_is_wrong():
    with pytest.raises(ValueError, match="buffer length must be positive"):
        OverlongShaping(buffer=0)
    with pytest.raises(ValueError, match="penalty factor"):
        OverlongShaping(penalty=-1.0)
    with pytest.raises(ValueError, match="shorter than the maximum response length 4096"):
        OverlongShaping(buffer=4096)(torch.zeros(1), torch.ones(1), max_length=4096)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        OverlongShaping(buffer=4)(torch.zeros(1), torch.tensor([-1]), max_length=10)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 64), st.integers(1, 200), st.integers(0, 300))
def test_overlong_penalty_is_in_minus_one_zero_and_monotone(buffer, extra, length):
    max_length = buffer + extra
    shaping = OverlongShaping(buffer=buffer)
    r = shaping.length_reward(torch.tensor([length, length + 1]), max_length)
    assert -1.0 <= float(r[0]) <= 0.0 and float(r[1]) <= float(r[0])
    assert (float(r[0]) == 0.0) == (length <= max_length - buffer)
