"""Seed-aware estimates: a table cell's mean over training seeds, its standard error, and paired verdicts.

A cell (one method on one benchmark, or on the average over a table's benchmarks) is estimated from S training runs
(one per seed), each evaluated on the same N problems with k samples: rates x[s, i] = c[s, i] / k. Problems and
seeds are random draws (a crossed random-effects model: x = mu + a_i + b_s + (ab)_si + sampling noise), the
estimate is the grand mean, and its variance sigma_a^2 / N + (sigma_b^2 + (sigma_ab^2 + noise) / N) / S is
estimated by moments as

    se^2 = max(0, var_i(mean_s x[s, i]) - MS_res / S) / N     problem term: which problems were drawn
         + var_s(mean_i x[s, i]) / S                          seed term: the spread of the S runs' values

where MS_res is the residual mean square of the seeds x problems table. The seed term is the plain standard error
of a mean of S independent runs given the problems (it holds each run's own sampling error, so the problem term
subtracts that share rather than count it twice). The estimator is unbiased before the truncation at 0, closed
form, and with one seed it is exactly the per-problem standard error the tables always showed: nothing to
subtract, and the seed term is unmeasured (the cell says so). For the average over benchmarks the problem terms
add (disjoint problem sets) and the seed term is taken on each run's average: a good seed is good on every
benchmark, so per-benchmark seed terms must not be added as if independent.

A hierarchical bootstrap (resample seeds, then problems) is the other common answer. It is not used: resampling
both ways of a crossed table counts the interaction and noise variance twice (no bootstrap of a crossed array is
unbiased, McCullagh 2000), it needs thousands of resamples per cell, and two or three seeds give only a handful of
distinct seed resamples. The difference of two methods on the same problems has the same terms: the problem term
on the per-problem differences of their seed means (pairing removes what the problems share), one seed term per
method (their runs are independent). Intervals use Student's t with Welch-Satterthwaite degrees of freedom
(problem terms N - 1, seed terms S - 1), so two or three seeds give honestly wide intervals;
tests/test_significance.py simulates their coverage.

A verdict (`compare`) is for the reference method against one other row in one column: the interval is at the
family-wise level over the column's comparisons (Bonferroni: each at 1 - alpha / m), and the reference is "better"
or "worse" when it excludes zero, else "not distinguishable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple, Sequence

import numpy as np

LEVEL = 0.95  # family-wise confidence level of the verdicts (per table column)
BETTER, WORSE, NOT_DISTINGUISHABLE = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class Term:
    """One method's evaluations in an estimate: per benchmark a [..., S, N_b] array of per-problem rates c/k (the
    same S for every benchmark), `sign` +1 or -1 (a difference is reference - other), `trained` False for a base
    model (not a training run: it has no seed variance, rather than an unmeasured one)."""

    rates: Sequence[np.ndarray]
    sign: float = 1.0
    trained: bool = True


class Estimate(NamedTuple):
    """Arrays over any leading (batch) axes; values and errors in percent."""

    value: np.ndarray  # mean over seeds (and benchmarks): the cell, or the reference - other difference
    se: np.ndarray  # sqrt(se_problems^2 + se_seeds^2)
    se_problems: np.ndarray  # problem sampling (with the within-run sampling error)
    se_seeds: np.ndarray  # run-to-run (seed) variation; NaN when a trained method has a single seed (unmeasured)
    df: np.ndarray  # Welch-Satterthwaite degrees of freedom of se


def residual_mean_square(rates: np.ndarray) -> np.ndarray:
    """MS of the seeds x problems interaction (two-way table without replication), over the last two axes."""
    n_seeds, n_problems = rates.shape[-2:]
    residual = (rates - rates.mean(-1, keepdims=True) - rates.mean(-2, keepdims=True)
                + rates.mean((-2, -1), keepdims=True))
    return (residual ** 2).sum((-2, -1)) / ((n_seeds - 1) * (n_problems - 1))


def estimate(terms: Sequence[Term]) -> Estimate:
    """The seed-aware estimate of sum(sign * mean over benchmarks of a method's seed-mean rate) (module docstring)."""
    n_bench = len(terms[0].rates)
    if any(len(term.rates) != n_bench for term in terms):
        raise ValueError("every term needs the same benchmarks")
    if any(len({r.shape[-2] for r in term.rates}) != 1 for term in terms):
        raise ValueError("a term needs the same seeds on every benchmark")
    weight = 1.0 / n_bench
    value = sum(term.sign * weight * sum(r.mean((-2, -1)) for r in term.rates) for term in terms)
    replicated = [term for term in terms if term.rates[0].shape[-2] > 1]
    components = []  # (variance, degrees of freedom)
    for b in range(n_bench):
        sizes = {term.rates[b].shape[-1] for term in terms}
        if len(sizes) != 1:
            raise ValueError(f"benchmark {b}: the terms were evaluated on different numbers of problems {sizes}")
        n_problems = sizes.pop()
        if n_problems < 2:
            components.append((np.nan, 1))
            continue
        per_problem = sum(term.sign * term.rates[b].mean(-2) for term in terms)
        noise = sum(residual_mean_square(term.rates[b]) / term.rates[b].shape[-2] for term in replicated)
        spread = np.maximum(0.0, np.var(per_problem, axis=-1, ddof=1) - noise)
        components.append((weight ** 2 * spread / n_problems, n_problems - 1))
    problem_var = sum(v for v, _ in components)
    seed_var = 0.0
    for term in replicated:
        run_values = weight * sum(r.mean(-1) for r in term.rates)  # [..., S]: each run's value
        var = np.var(run_values, axis=-1, ddof=1) / run_values.shape[-1]
        seed_var = seed_var + var
        components.append((var, run_values.shape[-1] - 1))
    unmeasured = any(term.trained and term.rates[0].shape[-2] == 1 for term in terms)
    total = problem_var + seed_var
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total ** 2 / sum(np.asarray(v) ** 2 / d for v, d in components)
    df = np.where(np.asarray(total) > 0, df, np.inf)
    shape = np.shape(total)
    se_seeds = np.full(shape, np.nan) if unmeasured else np.sqrt(seed_var) * np.ones(shape)
    return Estimate(100.0 * np.asarray(value), 100.0 * np.sqrt(total), 100.0 * np.sqrt(problem_var),
                    100.0 * se_seeds, df)


# ---------------------------------------------------------------------------------------------- Student's t


_lgamma = np.vectorize(math.lgamma, otypes=[float])
_normal_quantile = np.vectorize(NormalDist().inv_cdf, otypes=[float])
LARGE_DF = 1000.0  # from here on the Cornish-Fisher expansion in 1/df is exact to ~1e-9


def _beta_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_terms: int = 500) -> np.ndarray:
    """Continued fraction of the regularised incomplete beta function (modified Lentz), elementwise."""
    tiny = 1e-300

    def guard(value):
        return np.where(np.abs(value) < tiny, tiny, value)

    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            h = h * d * c
        if np.all(np.abs(d * c - 1.0) < 1e-15):
            break
    return h


def regularised_beta(a, b, x) -> np.ndarray:
    """I_x(a, b) for 0 < x < 1, elementwise."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, x)))
    front = np.exp(_lgamma(a + b) - _lgamma(a) - _lgamma(b) + a * np.log(x) + b * np.log1p(-x))
    direct = x < (a + 1.0) / (a + b + 2.0)
    low = front * _beta_fraction(a, b, x) / a
    high = 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b
    return np.where(direct, low, high)


def t_cdf(t, df) -> np.ndarray:
    """P(T <= t) for Student's t with a finite `df` (which may be fractional)."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=float), np.asarray(df, dtype=float))
    tail = 0.5 * regularised_beta(df / 2.0, 0.5, df / (df + t ** 2))
    return np.where(t >= 0, 1.0 - tail, tail)


def t_pdf(t, df) -> np.ndarray:
    t, df = np.asarray(t, dtype=float), np.asarray(df, dtype=float)
    return np.exp(_lgamma((df + 1.0) / 2.0) - _lgamma(df / 2.0) - 0.5 * np.log(df * math.pi)
                  - (df + 1.0) / 2.0 * np.log1p(t ** 2 / df))


def t_quantile(p, df) -> np.ndarray:
    """The p-quantile of Student's t (0.5 <= p < 1), elementwise; df may be fractional or inf. Large df: the
    Cornish-Fisher expansion (Abramowitz and Stegun 26.7.5); otherwise Newton steps on `t_cdf`, kept inside a
    bracket (a step leaving it is replaced by bisection)."""
    p, df = np.broadcast_arrays(np.asarray(p, dtype=float), np.asarray(df, dtype=float))
    if np.any((p < 0.5) | (p >= 1.0)) or np.any(df <= 0):
        raise ValueError("t_quantile needs 0.5 <= p < 1 and df > 0")
    shape, p, df = p.shape, p.ravel(), df.ravel()
    z = _normal_quantile(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(np.isfinite(df), df, np.inf)
        expansion = (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
                     + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))
    small = df < LARGE_DF
    if not small.any():
        return expansion.reshape(shape)
    q, nu = p[small], df[small]
    low, high = np.zeros_like(q), np.maximum(expansion[small], 1.0)
    while np.any(short := t_cdf(high, nu) < q):
        low, high = np.where(short, high, low), np.where(short, 2.0 * high, high)
    x = 0.5 * (low + high)
    for _ in range(200):
        cdf = t_cdf(x, nu)
        low, high = np.where(cdf < q, x, low), np.where(cdf < q, high, x)
        step = x - (cdf - q) / t_pdf(x, nu)
        inside = (step > low) & (step < high)
        new = np.where(inside, step, 0.5 * (low + high))
        if np.all(np.abs(new - x) <= 1e-12 * np.maximum(1.0, np.abs(x))):
            x = new
            break
        x = new
    out = expansion.copy()
    out[small] = x
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------- verdicts


class Verdict(NamedTuple):
    difference: float  # reference - other, percent
    se: float
    se_problems: float
    se_seeds: float  # NaN: a trained row has one seed, so run-to-run variance is not in the interval
    df: float
    low: float  # the interval at the family-wise level
    high: float
    verdict: str  # BETTER / WORSE / NOT_DISTINGUISHABLE (for the reference)
    seeds_measured: bool


def interval(estimate: Estimate, comparisons: int, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The Bonferroni-corrected interval: each of `comparisons` intervals at 1 - (1 - level) / comparisons."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    alpha = (1.0 - level) / comparisons
    half = np.where(estimate.se > 0, t_quantile(1.0 - alpha / 2.0, np.where(estimate.se > 0, estimate.df, 1.0))
                    * estimate.se, 0.0)
    return estimate.value - half, estimate.value + half


def verdict_of(low, high) -> np.ndarray:
    return np.where(low > 0, BETTER, np.where(high < 0, WORSE, NOT_DISTINGUISHABLE))


def compare(pairs: Sequence[tuple[Term, Term]], comparisons: int, level: float = LEVEL) -> list[Verdict]:
    """The verdict for reference - other of each (reference, other) pair, at `level` family-wise over
    `comparisons` comparisons (one column of a table); one vectorised t quantile for all of them."""
    results = [estimate([reference, Term(other.rates, -1.0, other.trained)]) for reference, other in pairs]
    stacked = Estimate(*(np.array([float(getattr(r, field)) for r in results]) for field in Estimate._fields))
    low, high = interval(stacked, comparisons, level)
    verdict = verdict_of(low, high)
    return [Verdict(*(float(getattr(stacked, field)[i]) for field in ("value", "se", "se_problems", "se_seeds", "df")),
                    float(low[i]), float(high[i]), str(verdict[i]), bool(np.isfinite(stacked.se_seeds[i])))
            for i in range(len(results))]
