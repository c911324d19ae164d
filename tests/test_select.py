"""conspo select: best, last and validated checkpoints; the validation set's disjointness from the training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conspo import select
from conspo.data import write_jsonl

N = 10


def metrics(root: Path, step: int, benchmark: str, solved: int) -> str:
    path = root / f"step-{step:06d}" / f"{benchmark}.metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "metric": "pass@1", "value": 100.0 * solved / N, "k": 1,
                                "n_problems": N, "se_problems": 1.0, "se_generation": 0.0,
                                "per_problem_correct": [1] * solved + [0] * (N - solved)}))
    return str(path)


def test_validated_checkpoint_is_chosen_on_the_validation_benchmark_alone(tmp_path):
    """Step 200 is best on the reported benchmarks (a lucky peak), step 300 on the held-out validation set."""
    scores = {100: (3, 3, 2), 200: (8, 7, 4), 300: (6, 6, 9), 400: (5, 6, 9)}  # AIME24, AMC, Validation
    files = [metrics(tmp_path, step, bench, solved) for step, row in scores.items()
             for bench, solved in zip(("AIME24", "AMC", "Validation"), row)]
    chosen = select.select("run", files, validation="Validation")
    assert chosen["best"]["step"] == 200 and chosen["best"]["average"] == pytest.approx(75.0)  # Validation left out
    assert chosen["validated"]["step"] == 300  # ties (300, 400) go to the earlier step
    assert chosen["last"]["step"] == 400 and chosen["validation"] == "Validation"
    assert chosen["validated"]["benchmarks"]["AIME24"]["per_problem_correct"] == [1] * 6 + [0] * 4
    without = select.select("run", files)
    assert "validated" not in without and without["best"]["step"] == 300  # Validation then counts as a benchmark
    with pytest.raises(ValueError, match="no evaluation on the validation benchmark 'MATH500'"):
        select.select("run", files, validation="MATH500")


def test_cli_writes_the_validated_choice(tmp_path, capsys):
    files = [metrics(tmp_path, step, bench, solved) for step, row in {4: (2, 5), 8: (3, 1)}.items()
             for bench, solved in zip(("AIME24", "Validation"), row)]
    out = tmp_path / "selected.json"
    assert select.main(["select", "--run", "r", "--metrics", *files, "--validation", "Validation",
                        "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert (written["best"]["step"], written["validated"]["step"]) == (8, 4)
    assert "validated step 4" in capsys.readouterr().out


def test_a_validation_set_sharing_a_training_prompt_is_refused(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    write_jsonl(train, [{"id": f"t{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i), "source": "t"}
                        for i in range(5)])
    write_jsonl(validation, [{"id": "v0", "problem": "What is 7 + 7?", "answer": "14", "source": "v"},
                             {"id": "v1", "problem": "what  is 3 +\n3?", "answer": "6", "source": "v"}])
    with pytest.raises(ValueError, match=r"validation\.jsonl: 1 of its 2 problems are training prompts .* "
                                         r"\(first: v1\)"):
        select.check_validation(str(train), str(validation))
    write_jsonl(validation, [{"id": "v0", "problem": "What is 7 + 7?", "answer": "14", "source": "v"}])
    out = tmp_path / "check.json"
    assert select.main(["check-validation", "--train", str(train), "--validation", str(validation),
                        "--out", str(out)]) == 0
    assert json.loads(out.read_text())["shared"] == 0 and json.loads(out.read_text())["training_prompts"] == 5
