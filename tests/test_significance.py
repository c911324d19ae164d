"""conspo.significance: Student's t against closed forms, the one-seed estimator against conspo.metrics, the
variance identity, and simulations with known ground truth (interval coverage, verdicts on real and null
differences). Every simulation is 1,000 vectorised draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conspo.metrics import paired_difference, summarise
from conspo.significance import (BETTER, NOT_DISTINGUISHABLE, WORSE, Term, compare, estimate, interval,
                                 residual_mean_square, t_cdf, t_quantile, verdict_of)

DRAWS = 1000
HERMITE_NODES, HERMITE_WEIGHTS = np.polynomial.hermite_e.hermegauss(60)
HERMITE_WEIGHTS = HERMITE_WEIGHTS / HERMITE_WEIGHTS.sum()


# ---------------------------------------------------------------------------------------------- Student's t


def test_t_quantile_matches_closed_forms_and_tables():
    p = np.array([0.9, 0.975, 0.995, 1 - 0.05 / 128])
    assert t_quantile(p, 1.0) == pytest.approx(np.tan(np.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2.0) == pytest.approx((2 * p - 1) / np.sqrt(2 * p * (1 - p)), rel=1e-9)
    # printed tables (e.g. Abramowitz and Stegun, Table 26.10) and the normal limit
    table = {(0.975, 4): 2.776445, (0.975, 10): 2.228139, (0.975, 30): 2.042272, (0.995, 5): 4.032143,
             (0.975, 120): 1.979930, (0.975, math.inf): 1.959964}
    for (q, df), value in table.items():
        assert float(t_quantile(q, df)) == pytest.approx(value, abs=2e-6)
    # fractional df: the cdf integrates the density to the quantile
    x = np.linspace(0, float(t_quantile(0.975, 2.5)), 200_001)
    scale = math.exp(math.lgamma(1.75) - math.lgamma(1.25) - 0.5 * math.log(2.5 * math.pi))
    density = scale * (1 + x ** 2 / 2.5) ** -1.75
    assert 0.5 + np.trapezoid(density, x) == pytest.approx(0.975, abs=1e-9)
    assert float(t_cdf(-2.776445, 4)) == pytest.approx(0.025, abs=1e-7)
    # the switch to the large-df expansion is continuous
    assert float(t_quantile(0.975, 999.999)) == pytest.approx(float(t_quantile(0.975, 1000.0)), abs=1e-8)


# ---------------------------------------------------------------------------------------------- the estimator


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), data=st.data())
def test_one_seed_is_the_per_problem_standard_error_of_metrics(k, data):
    n = data.draw(st.integers(2, 40))
    a = data.draw(st.lists(st.integers(0, k), min_size=n, max_size=n))
    b = data.draw(st.lists(st.integers(0, k), min_size=n, max_size=n))
    cell = estimate([Term([np.array([a], dtype=float) / k])])
    summary = summarise(a, k)
    assert float(cell.value) == pytest.approx(summary.value, abs=1e-9)
    assert float(cell.se) == pytest.approx(summary.se_problems, abs=1e-9)
    assert np.isnan(cell.se_seeds)  # a trained run with one seed: run-to-run variance unmeasured
    (verdict,) = compare([(Term([np.array([a], dtype=float) / k]), Term([np.array([b], dtype=float) / k]))], 1)
    paired = paired_difference(a, b, k)
    assert verdict.difference == pytest.approx(paired.mean, abs=1e-9)
    assert verdict.se == pytest.approx(paired.se, abs=1e-9)
    assert verdict.df == (pytest.approx(n - 1) if paired.se > 0 else math.inf)  # no spread: a point interval
    assert not verdict.seeds_measured
    base = estimate([Term([np.array([a], dtype=float) / k], trained=False)])
    assert float(base.se_seeds) == 0.0  # a base model has no seed variance (it is not a training run)


@settings(max_examples=60, deadline=None)
@given(seeds=st.integers(2, 5), problems=st.integers(2, 30), seed=st.integers(0, 2 ** 32 - 1))
def test_variance_is_the_crossed_design_combination_of_mean_squares(seeds, problems, seed):
    """Without truncation, se^2 = (MS_problems + MS_seeds - MS_residual) / (N S): the unbiased variance of the grand
    mean of a seeds x problems table with random problems and seeds."""
    rates = np.random.default_rng(seed).binomial(4, np.random.default_rng(seed + 1).uniform(0, 1, problems),
                                                  (seeds, problems)) / 4
    ms_problems = seeds * np.var(rates.mean(0), ddof=1)
    ms_seeds = problems * np.var(rates.mean(1), ddof=1)
    ms_residual = float(residual_mean_square(rates))
    if ms_problems < ms_residual:  # truncated at zero: the identity holds only for the untruncated estimator
        return
    result = estimate([Term([rates])])
    assert float(result.se) ** 2 == pytest.approx(1e4 * (ms_problems + ms_seeds - ms_residual) / (problems * seeds),
                                                  rel=1e-9, abs=1e-12)
    assert float(result.se_seeds) ** 2 == pytest.approx(1e4 * ms_seeds / (problems * seeds), rel=1e-9, abs=1e-12)


def test_the_average_takes_its_seed_term_from_each_runs_average():
    """Seed effects that cancel across benchmarks leave the average with no seed spread, though each benchmark has
    one; seed effects shared by the benchmarks are counted once, not as if independent."""
    a = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=float)  # run values 0.5, 0.75
    b = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=float)  # 0.75, 0.5
    assert float(estimate([Term([a])]).se_seeds) == pytest.approx(12.5)  # 100 sqrt(var(0.5, 0.75) / 2)
    assert float(estimate([Term([a, b])]).se_seeds) == 0.0
    assert float(estimate([Term([a, a])]).se_seeds) == pytest.approx(12.5)
    assert float(estimate([Term([a, a])]).value) == pytest.approx(62.5)


def test_mismatched_problems_are_refused():
    with pytest.raises(ValueError, match="different numbers of problems"):
        estimate([Term([np.zeros((2, 5))]), Term([np.zeros((2, 6))], -1.0)])


# ---------------------------------------------------------------------------------------------- simulations


class World:
    """A benchmark population with known truth: problem difficulty on the logit scale, a per-method problem
    effect, a run (seed) effect shared by all of a run's problems and benchmarks, a seed x problem effect, and k
    Bernoulli samples per problem. The true score of a method is the expectation over problems and seeds."""

    def __init__(self, rng: np.random.Generator, population: int = 20_000):
        self.rng = rng
        self.difficulty = rng.normal(-0.3, 1.5, population)

    def method(self, shift: float, spread: float = 0.5) -> np.ndarray:
        return self.difficulty + shift + self.rng.normal(0.0, spread, self.difficulty.size)

    @staticmethod
    def truth(logits: np.ndarray, seed_sd: float, interaction_sd: float) -> float:
        sd = math.hypot(seed_sd, interaction_sd)
        return 100.0 * float((1 / (1 + np.exp(-(logits[:, None] + sd * HERMITE_NODES))) @ HERMITE_WEIGHTS).mean())

    def problems(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.difficulty.size, (DRAWS, n))

    def runs(self, logits: np.ndarray, problems: np.ndarray, seeds: int, k: int, seed_effects: np.ndarray,
             interaction_sd: float) -> np.ndarray:
        """[DRAWS, seeds, N] rates of one method on one benchmark, each draw its own runs."""
        z = logits[problems][:, None, :] + seed_effects + self.rng.normal(0.0, interaction_sd,
                                                                          (DRAWS, seeds, problems.shape[1]))
        return self.rng.binomial(k, 1 / (1 + np.exp(-z))) / k


def coverage(world: World, seeds: int, seed_sd: float, interaction_sd: float, benchmarks: list[tuple[int, int]]):
    """Coverage of the 95% interval of ConSPO - other (shift 0.2 on the logit scale) and of the other method's cell,
    on the average over `benchmarks` ((N, k) each), a run's seed effect shared by its benchmarks."""
    ours, theirs = world.method(0.2), world.method(0.0)
    truth = {name: world.truth(logits, seed_sd, interaction_sd)
             for name, logits in (("ours", ours), ("theirs", theirs))}
    ours_effect, theirs_effect = (world.rng.normal(0.0, seed_sd, (DRAWS, seeds, 1)) for _ in range(2))
    ours_rates, theirs_rates = [], []
    for n, k in benchmarks:
        problems = world.problems(n)
        ours_rates.append(world.runs(ours, problems, seeds, k, ours_effect, interaction_sd))
        theirs_rates.append(world.runs(theirs, problems, seeds, k, theirs_effect, interaction_sd))
    difference = estimate([Term(ours_rates), Term(theirs_rates, -1.0)])
    low, high = interval(difference, 1)
    covered = np.mean((low <= truth["ours"] - truth["theirs"]) & (truth["ours"] - truth["theirs"] <= high))
    cell = estimate([Term(theirs_rates)])
    cell_low, cell_high = interval(cell, 1)
    return covered, np.mean((cell_low <= truth["theirs"]) & (truth["theirs"] <= cell_high))


@pytest.mark.parametrize("seeds, seed_sd, interaction_sd, benchmarks", [
    (3, 0.3, 0.3, [(60, 4)]),  # run-to-run variance dominates: Welch-like t with few degrees of freedom
    (2, 0.3, 0.3, [(60, 4)]),  # two seeds: one degree of freedom per method
    (5, 0.5, 0.1, [(60, 4)]),
    (3, 0.0, 0.0, [(60, 4)]),  # no run-to-run variance at all
    (1, 0.0, 0.0, [(60, 4)]),  # one seed is honest only when runs do not vary
    (3, 0.2, 0.3, [(30, 8), (200, 1), (60, 4)]),  # the average over benchmarks of different sizes and k
])
def test_intervals_cover_the_true_difference_at_their_nominal_rate(seeds, seed_sd, interaction_sd, benchmarks):
    world = World(np.random.default_rng(seeds * 100 + len(benchmarks)))
    difference, cell = coverage(world, seeds, seed_sd, interaction_sd, benchmarks)
    assert 0.93 <= difference <= 0.985  # nominal 0.95 (1,000 draws: binomial sd 0.007), and not vacuous
    # A single cell's interval (not shown in the tables: they show its standard error) is a sum of a problem term
    # and a seed term of S - 1 degrees of freedom; with two seeds Satterthwaite's df is a little liberal (~0.92).
    assert cell >= 0.9


def test_one_seed_misses_run_to_run_variance():
    """With one seed per method the interval cannot hold the spread between runs: it undercovers badly, which is
    why a one-seed table says that run-to-run variance is unmeasured."""
    difference, _ = coverage(World(np.random.default_rng(7)), 1, 0.3, 0.3, [(60, 4)])
    assert difference < 0.8


def test_verdicts_separate_real_differences_from_none():
    """A column of seven comparisons (Bonferroni): four methods equal to the reference, three truly worse by about
    8 points. Family-wise, a false 'significant' verdict among the nulls stays under 5%; the real differences are
    called 'better' (for the reference) in most draws, and 'worse' when the roles are swapped."""
    world = World(np.random.default_rng(11))
    seeds, k, interaction_sd, seed_sd = 5, 4, 0.2, 0.1
    problems = world.problems(200)
    reference = world.method(0.0)
    weaker = reference - 0.5
    true_gap = world.truth(reference, seed_sd, interaction_sd) - world.truth(weaker, seed_sd, interaction_sd)
    assert 7.0 < true_gap < 10.0

    def runs(logits):
        return world.runs(logits, problems, seeds, k, world.rng.normal(0.0, seed_sd, (DRAWS, seeds, 1)),
                          interaction_sd)

    ours = runs(reference)
    others = [runs(reference) for _ in range(4)] + [runs(weaker) for _ in range(3)]
    verdicts = []
    for theirs in others:
        low, high = interval(estimate([Term([ours]), Term([theirs], -1.0)]), len(others))
        verdicts.append(verdict_of(low, high))
    verdicts = np.array(verdicts)  # [comparison, draw]
    family_wise_error = np.mean((verdicts[:4] != NOT_DISTINGUISHABLE).any(axis=0))
    assert family_wise_error <= 0.05
    assert np.mean(verdicts[4:] == BETTER) >= 0.85 and not np.any(verdicts[4:] == WORSE)
    low, high = interval(estimate([Term([others[4]]), Term([ours], -1.0)]), len(others))
    assert np.mean(verdict_of(low, high) == WORSE) >= 0.85


def test_compare_says_when_run_to_run_variance_is_unmeasured():
    rng = np.random.default_rng(3)
    three = rng.binomial(1, 0.6, (3, 50)).astype(float)
    one = rng.binomial(1, 0.4, (1, 50)).astype(float)
    with_base, with_single = compare([(Term([three]), Term([one], trained=False)), (Term([three]), Term([one]))], 2)
    assert with_base.seeds_measured and not with_single.seeds_measured
    assert with_base.se == pytest.approx(with_single.se) and with_base.low < with_base.difference < with_base.high
