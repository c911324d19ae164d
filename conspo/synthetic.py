"""Deterministic synthetic verifiable math tasks: offline stand-ins for the paper's datasets.

Every problem is a short printable-ASCII arithmetic or linear-equation statement with an integer answer, small
enough for a character-level toy policy to partly learn. Two training kinds stand in for DeepScaleR and
DAPO-Math-17k (different generators and distributions); seven benchmark kinds stand in for the paper's benchmarks,
graded in difficulty (MATH500 easiest, HMMT25 hardest) so that a tiny results table has the paper's shape.

Training and benchmark problems can never coincide: every problem text is assigned to one side by a stable hash
(`problem_side`), and each generator keeps only problems of its own side.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpressionStyle:
    """How to draw one "Compute a+b-c." problem: the number of operands and their range (0..max_operand)."""

    operands: int
    max_operand: int


@dataclass(frozen=True)
class EquationStyle:
    """How to draw one "Solve a*x+b=c for x." problem (a 1 is written "x+b=c"): coefficient, solution and offset
    ranges."""

    max_coefficient: int
    max_solution: int  # solutions are drawn from 0..max_solution
    max_offset: int = 20


@dataclass(frozen=True)
class TaskKind:
    """One synthetic kind: its role, the real dataset it stands in for, and how its problems are drawn (expressions
    from one of `expressions`, chosen uniformly, or a linear equation with probability `equation_share`)."""

    role: str  # "train" or "benchmark"
    stands_for: str
    description: str
    expressions: tuple[ExpressionStyle, ...]
    equation: EquationStyle | None = None
    equation_share: float = 0.0  # fraction of problems drawn as linear equations


# Difficulty is graded by operand count and range only (sums and differences), so that a few-minute warm start of a
# character-level policy on worked solutions learns them partially: what is measured is generalisation to unseen
# operand tuples.
BENCHMARK_STYLES = {
    "math500": ExpressionStyle(2, 14),
    "amc": ExpressionStyle(2, 20),
    "olympiadbench": ExpressionStyle(2, 29),
    "aime24": ExpressionStyle(3, 5),
    "aime25": ExpressionStyle(3, 9),
    "aime26": ExpressionStyle(3, 12),
    "hmmt25": ExpressionStyle(3, 19),
}

KINDS: dict[str, TaskKind] = {
    "train-deepscaler": TaskKind(
        role="train",
        stands_for="agentica-org/DeepScaleR-Preview-Dataset",
        description="mixed-difficulty sums and differences: every benchmark family (2 operands up to 14/20/29, "
                    "3 operands up to 5/9/12/19)",
        expressions=tuple(BENCHMARK_STYLES.values()),
    ),
    "train-dapo": TaskKind(
        role="train",
        stands_for="BytedTsinghua-SIA/DAPO-Math-17k",
        description="half tiny linear equations (x+b=c or 2*x+b=c, x up to 20), half 2-operand sums up to 19",
        expressions=(ExpressionStyle(2, 19),),
        equation=EquationStyle(max_coefficient=2, max_solution=20),
        equation_share=0.5,
    ),
    "math500": TaskKind(
        role="benchmark", stands_for="HuggingFaceH4/MATH-500",
        description="easiest: two operands up to 14, + and -", expressions=(BENCHMARK_STYLES["math500"],)),
    "amc": TaskKind(
        role="benchmark", stands_for="AI-MO/aimo-validation-amc",
        description="two operands up to 20, + and -", expressions=(BENCHMARK_STYLES["amc"],)),
    "olympiadbench": TaskKind(
        role="benchmark", stands_for="Hothan/OlympiadBench",
        description="two operands up to 29, + and -", expressions=(BENCHMARK_STYLES["olympiadbench"],)),
    "aime24": TaskKind(
        role="benchmark", stands_for="HuggingFaceH4/aime_2024",
        description="three operands up to 5, + and -", expressions=(BENCHMARK_STYLES["aime24"],)),
    "aime25": TaskKind(
        role="benchmark", stands_for="MathArena/aime_2025",
        description="three operands up to 9, + and -", expressions=(BENCHMARK_STYLES["aime25"],)),
    "aime26": TaskKind(
        role="benchmark", stands_for="MathArena/aime_2026",
        description="three operands up to 12, + and -", expressions=(BENCHMARK_STYLES["aime26"],)),
    "hmmt25": TaskKind(
        role="benchmark", stands_for="MathArena/hmmt_feb_2025",
        description="hardest: three operands up to 19, + and -", expressions=(BENCHMARK_STYLES["hmmt25"],)),
}

TRAIN_KINDS = tuple(name for name, kind in KINDS.items() if kind.role == "train")
BENCHMARK_KINDS = tuple(name for name, kind in KINDS.items() if kind.role == "benchmark")


# Several phrasings of the same expression: enough distinct texts for the full-size stand-ins (500 MATH500 and 675
# OlympiadBench problems) while the operand ranges stay small.
EXPRESSION_TEMPLATES = ("Compute {}.", "Evaluate {}.", "Calculate {}.", "Find {}.", "What is {}?", "Work out {}.")


def problem_side(problem: str) -> str:
    """The side ("train" or "benchmark") a problem text belongs to; one in four texts go to benchmarks."""
    digest = hashlib.sha256(problem.encode("ascii")).digest()
    return "benchmark" if digest[0] % 4 == 0 else "train"


def _draw_expression(rng: random.Random, style: ExpressionStyle) -> tuple[str, int]:
    values = [rng.randint(0, style.max_operand) for _ in range(style.operands)]
    operators = [rng.choice("+-") for _ in range(style.operands - 1)]
    text = str(values[0]) + "".join(operator + str(value) for operator, value in zip(operators, values[1:]))
    answer = values[0] + sum(value if operator == "+" else -value for operator, value in zip(operators, values[1:]))
    return rng.choice(EXPRESSION_TEMPLATES).format(text), answer


def _draw_equation(rng: random.Random, style: EquationStyle) -> tuple[str, int]:
    coefficient = rng.randint(1, style.max_coefficient)
    solution = rng.randint(0, style.max_solution)
    offset = rng.randint(1, style.max_offset)
    sign = rng.choice("+-")
    right = coefficient * solution + (offset if sign == "+" else -offset)
    unknown = "x" if coefficient == 1 else f"{coefficient}*x"
    return f"Solve {unknown}{sign}{offset}={right} for x.", solution


EXPRESSION = re.compile(r"(?:Compute|Evaluate|Calculate|Find|What is|Work out) (\d+(?:[+-]\d+)+)[.?]")
EQUATION = re.compile(r"Solve (?:(\d+)\*)?x([+-])(\d+)=(-?\d+) for x\.")


def worked_solution(problem: str, boxed: bool = True) -> str:
    """The step-by-step solution of a synthetic problem, one binary operation per step, ending in the boxed answer:
    "Compute 3+5-2." -> "3+5=8, 8-2=6. \\boxed{6}"; "Solve 2*x+3=17 for x." -> "2*x=17-3=14, x=14/2=7. \\boxed{7}".
    The warm start teaches this form, so each result is computed next to its operands, not 70 characters after
    them (the prompt's instruction sits between the problem and the answer). With `boxed=False` the same steps end
    in plain words instead ("3+5=8, 8-2=6. The answer is 6."), which the boxed verifier does not credit."""
    expression = EXPRESSION.fullmatch(problem)
    if expression:
        numbers = [int(number) for number in re.findall(r"\d+", expression.group(1))]
        operators = re.findall(r"[+-]", expression.group(1))
        steps, value = [], numbers[0]
        for operator, number in zip(operators, numbers[1:]):
            result = value + number if operator == "+" else value - number
            steps.append(f"{value}{operator}{number}={result}")
            value = result
        return ", ".join(steps) + ". " + _final_answer(value, boxed)
    equation = EQUATION.fullmatch(problem)
    if equation is None:
        raise ValueError(f"not a synthetic problem: {problem!r}")
    coefficient, sign, offset, right = int(equation.group(1) or 1), equation.group(2), int(equation.group(3)), \
        int(equation.group(4))
    moved = right - offset if sign == "+" else right + offset
    inverse = "-" if sign == "+" else "+"
    if coefficient == 1:
        return f"x={right}{inverse}{offset}={moved}. " + _final_answer(moved, boxed)
    solution = moved // coefficient
    return f"{coefficient}*x={right}{inverse}{offset}={moved}, x={moved}/{coefficient}={solution}. " \
        + _final_answer(solution, boxed)


def _final_answer(value: int, boxed: bool) -> str:
    return f"\\boxed{{{value}}}" if boxed else f"The answer is {value}."


def make_tasks(kind: str, n: int, seed: int) -> list[dict]:
    """`n` distinct problems of `kind` as records {id, problem, answer, source}; the same (kind, n, seed) always
    gives the same records, and a larger `n` extends a smaller one."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; kinds: {', '.join(KINDS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    spec = KINDS[kind]
    rng = random.Random(f"conspo-synthetic:{kind}:{seed}")
    records: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"synthetic kind {kind!r} cannot supply {n} distinct problems")
        if spec.equation is not None and rng.random() < spec.equation_share:
            problem, answer = _draw_equation(rng, spec.equation)
        else:
            problem, answer = _draw_expression(rng, rng.choice(spec.expressions))
        if problem in seen or problem_side(problem) != spec.role:
            continue
        seen.add(problem)
        records.append({"id": f"{kind}-s{seed}-{len(records):05d}", "problem": problem, "answer": str(answer),
                        "source": f"synthetic:{kind}"})
    return records
