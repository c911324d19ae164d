"""Benchmark metrics: avg@k, unbiased pass@k, and the standard errors of METHODS.md ("Evaluation protocol").

`correct_counts` holds c_i, the number of correct samples out of k for problem i. avg@k and pass@k return fractions;
`summarise` and `paired_difference` report percentages, as the tables do.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Summary(NamedTuple):
    value: float  # avg@k in percent (pass@1 when estimated from k samples per problem)
    se_problems: float  # sd(c_i/k)/sqrt(N), percent: how much the score depends on which problems were drawn
    se_generation: float  # sqrt(sum p_i(1-p_i)/k)/N, percent: sampling noise of the k generations


class Difference(NamedTuple):
    mean: float  # mean over problems of (a_i - b_i)/k, percent
    se: float  # sd of the per-problem differences / sqrt(N), percent


def _check_counts(correct_counts: Sequence[int], k: int) -> list[int]:
    counts = [int(count) for count in correct_counts]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not counts:
        raise ValueError("no problems: correct_counts is empty")
    if any(count < 0 or count > k for count in counts):
        raise ValueError(f"correct counts must lie in [0, {k}]")
    return counts


def _sample_sd(values: list[float]) -> float:
    """Sample standard deviation (n - 1 denominator); NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), as a running product (no huge
    binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for drawn in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / drawn
    return 1.0 - all_wrong


def avg_at_k(correct_counts: Sequence[int], k: int) -> float:
    """Mean over problems of c_i/k (a fraction)."""
    counts = _check_counts(correct_counts, k)
    return sum(counts) / (k * len(counts))


def summarise(correct_counts: Sequence[int], k: int) -> Summary:
    """avg@k and its two standard errors, all in percent; se_problems is NaN for a single problem."""
    counts = _check_counts(correct_counts, k)
    rates = [count / k for count in counts]
    n_problems = len(rates)
    value = sum(rates) / n_problems
    se_problems = _sample_sd(rates) / math.sqrt(n_problems)
    se_generation = math.sqrt(sum(rate * (1.0 - rate) for rate in rates) / k) / n_problems
    return Summary(100.0 * value, 100.0 * se_problems, 100.0 * se_generation)


def paired_difference(a_counts: Sequence[int], b_counts: Sequence[int], k: int) -> Difference:
    """Mean per-problem difference of two evaluations on the same problems (a - b) and its standard error, in
    percent (NaN for a single problem); pairing removes the problem-to-problem variance both share."""
    a = _check_counts(a_counts, k)
    b = _check_counts(b_counts, k)
    if len(a) != len(b):
        raise ValueError(f"paired evaluations need the same problems: {len(a)} vs {len(b)} counts")
    differences = [(a_i - b_i) / k for a_i, b_i in zip(a, b)]
    mean = sum(differences) / len(differences)
    return Difference(100.0 * mean, 100.0 * _sample_sd(differences) / math.sqrt(len(differences)))
