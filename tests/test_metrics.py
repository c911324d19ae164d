import itertools
import math
import statistics
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conspo.metrics import Difference, Summary, avg_at_k, pass_at_k, paired_difference, summarise


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(index < c for index in subset) for subset in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)
    exact = 1 - Fraction(math.comb(1024 - 3, 512), math.comb(1024, 512))
    assert pass_at_k(1024, 3, 512) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(100_000, 0, 50_000) == 0.0
    assert pass_at_k(32, 5, 1) == pytest.approx(5 / 32)


def test_pass_at_k_refuses_impossible_arguments():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@given(k=st.integers(1, 5), data=st.data())
@settings(max_examples=60, deadline=None)
def test_avg_at_k_is_the_mean_over_all_sampled_outcomes(k, data):
    counts = data.draw(st.lists(st.integers(0, k), min_size=1, max_size=3))
    # enumerate every assignment of k correct/incorrect flags per problem consistent with the counts
    per_problem = [[flags for flags in itertools.product((0, 1), repeat=k) if sum(flags) == c] for c in counts]
    outcomes = [sum(sum(flags) for flags in choice) / (k * len(counts)) for choice in itertools.product(*per_problem)]
    assert avg_at_k(counts, k) == pytest.approx(statistics.fmean(outcomes))
    assert avg_at_k(counts, k) == pytest.approx(statistics.fmean(pass_at_k(k, c, 1) for c in counts))


def test_summarise_uses_the_protocol_formulas():
    counts, k = [32, 16, 0, 8], 32
    rates = [1.0, 0.5, 0.0, 0.25]
    summary = summarise(counts, k)
    assert isinstance(summary, Summary)
    assert summary.value == pytest.approx(100 * statistics.fmean(rates))
    assert summary.se_problems == pytest.approx(100 * statistics.stdev(rates) / 2)
    assert summary.se_generation == pytest.approx(100 * math.sqrt((0.25 + 0.1875) / k) / 4)


@given(st.lists(st.integers(0, 4), min_size=2, max_size=12))
@settings(max_examples=50, deadline=None)
def test_se_generation_matches_the_variance_of_the_mean_over_all_outcomes(counts):
    """se_generation is the sd of the avg@k estimate when each sample is a Bernoulli(p_i) draw."""
    k = 4
    rates = [c / k for c in counts]
    variance = sum(p * (1 - p) / k for p in rates) / len(rates) ** 2
    assert summarise(counts, k).se_generation == pytest.approx(100 * math.sqrt(variance))


def test_single_problem_has_no_problem_sampling_error():
    summary = summarise([3], 4)
    assert summary.value == 75.0 and math.isnan(summary.se_problems)
    assert summary.se_generation == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))


def test_paired_difference():
    a, b, k = [4, 3, 2, 4], [2, 3, 0, 3], 4
    differences = [0.5, 0.0, 0.5, 0.25]
    result = paired_difference(a, b, k)
    assert isinstance(result, Difference)
    assert result.mean == pytest.approx(100 * statistics.fmean(differences))
    assert result.se == pytest.approx(100 * statistics.stdev(differences) / 2)
    assert paired_difference(a, a, k) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(a, b[:2], k)


def test_counts_outside_zero_to_k_are_refused():
    with pytest.raises(ValueError):
        summarise([5], 4)
    with pytest.raises(ValueError):
        avg_at_k([], 4)
