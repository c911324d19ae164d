import re
import string

import pytest

from conspo.synthetic import BENCHMARK_KINDS, KINDS, TRAIN_KINDS, make_tasks, problem_side, worked_solution

PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


def _solve(problem: str) -> int:
    """Independent check of a problem's answer: Python's own integer arithmetic on the statement."""
    expression = re.fullmatch(r"(?:Compute|Evaluate|Calculate|Find|What is|Work out) ([0-9+\-*()]+)[.?]", problem)
    if expression:
        return eval(expression.group(1), {"__builtins__": {}})  # digits, + - * and brackets only
    equation = re.fullmatch(r"Solve (?:(\d+)\*)?x([+-]\d+)=(-?\d+) for x\.", problem)
    assert equation, problem
    coefficient, offset, right = (int(group or 1) for group in equation.groups())
    assert (right - offset) % coefficient == 0
    return (right - offset) // coefficient


def test_kinds_cover_the_paper_datasets():
    assert set(TRAIN_KINDS) == {"train-deepscaler", "train-dapo"}
    assert set(BENCHMARK_KINDS) == {"aime24", "aime25", "aime26", "hmmt25", "math500", "amc", "olympiadbench"}
    assert all(kind.description and kind.stands_for for kind in KINDS.values())


@pytest.mark.parametrize("kind", list(KINDS))
def test_records_are_correct_distinct_ascii_and_deterministic(kind):
    records = make_tasks(kind, 300, seed=3)
    assert records == make_tasks(kind, 300, seed=3)
    assert records != make_tasks(kind, 300, seed=4)
    assert make_tasks(kind, 100, seed=3) == records[:100]
    assert len({record["problem"] for record in records}) == 300
    assert len({record["id"] for record in records}) == 300
    for record in records:
        assert set(record) == {"id", "problem", "answer", "source"}
        assert record["source"] == f"synthetic:{kind}"
        assert set(record["problem"]) <= PRINTABLE and len(record["problem"]) <= 40
        assert int(record["answer"]) == _solve(record["problem"])


@pytest.mark.parametrize("kind, rows", [("math500", 500), ("olympiadbench", 675), ("amc", 83),
                                        ("train-deepscaler", 4096), ("train-dapo", 4096)])
def test_stand_ins_supply_their_full_default_size(kind, rows):
    assert len(make_tasks(kind, rows, seed=0)) == rows


def test_problems_are_small_sums_a_tiny_policy_can_learn():
    for kind in KINDS:
        for record in make_tasks(kind, 200, seed=0):
            assert all(int(number) <= 29 for number in re.findall(r"\d+", record["problem"].split("=")[0])), record


def test_benchmarks_never_overlap_training_sets():
    training = {r["problem"] for kind in TRAIN_KINDS for seed in (0, 1) for r in make_tasks(kind, 3000, seed)}
    for kind in BENCHMARK_KINDS:
        for seed in (0, 1):
            problems = {r["problem"] for r in make_tasks(kind, 200, seed)}
            assert not problems & training, kind
            assert all(problem_side(problem) == "benchmark" for problem in problems)


def test_benchmarks_are_graded_in_difficulty():
    def mean_size(kind):
        records = make_tasks(kind, 200, seed=0)
        operands = sum(len(re.findall(r"\d+", r["problem"])) for r in records) / len(records)
        digits = sum(len(r["answer"].lstrip("-")) for r in records) / len(records)
        return operands + digits

    sizes = [mean_size(kind) for kind in ("math500", "amc", "olympiadbench")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    sizes = [mean_size(kind) for kind in ("aime24", "aime25", "aime26", "hmmt25")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


@pytest.mark.parametrize("kind", list(KINDS))
def test_worked_solutions_reach_the_answer_one_operation_per_step(kind):
    for record in make_tasks(kind, 200, seed=0):
        solution = worked_solution(record["problem"])
        steps, boxed = solution.rsplit(". ", 1)
        assert boxed == f"\\boxed{{{record['answer']}}}"
        for step in steps.split(", "):  # "a+b=c", "x=c-b=d" or "x=d/a=e": every equality holds
            sides = step.split("=")
            values = [eval(side, {"__builtins__": {}}) for side in sides if "x" not in side]
            assert len(values) >= 2 and len(set(values)) == 1, (record, step)
        assert steps.split(", ")[-1].endswith("=" + record["answer"])


def test_worked_solution_examples():
    assert worked_solution("Compute 3+5-2.") == "3+5=8, 8-2=6. \\boxed{6}"
    assert worked_solution("What is 3-9?") == "3-9=-6. \\boxed{-6}"
    assert worked_solution("Solve x+5=3 for x.") == "x=3-5=-2. \\boxed{-2}"
    assert worked_solution("Solve 2*x-3=17 for x.") == "2*x=17+3=20, x=20/2=10. \\boxed{10}"
    assert worked_solution("Compute 3+5-2.", boxed=False) == "3+5=8, 8-2=6. The answer is 6."
    assert worked_solution("Solve x+5=3 for x.", boxed=False) == "x=3-5=-2. The answer is -2."
    with pytest.raises(ValueError, match="not a synthetic problem"):
        worked_solution("Compute 2**10.")


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="train-dapo"):
        make_tasks("gsm8k", 3, seed=0)
