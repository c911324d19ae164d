"""Runs that learned nothing say so: the trainer's per-step share of groups with a signal and its verdict in
done.json and train.log (conspo.learning), and the tables that mark such a run's cells instead of ranking them.

The end-to-end case: a training set whose every answer is unreachable, so every reward is 0; GRPO and ConSPO each
train two steps on it; their checkpoints and the base model then score the same 0.0 and the table bolds nobody."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conspo import select, tables
from conspo.data import write_jsonl
from conspo.learning import NO_SIGNAL_MARK, signal_share, summarise
from conspo.models import build_tiny_model
from conspo.plan import BASE_MODEL
from conspo.runconfig import parse_config
from conspo.synthetic import make_tasks
from conspo.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_signal_share_counts_groups_whose_rewards_differ():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert signal_share(rewards, groups) == 0.25
    assert signal_share(torch.zeros(8), groups) == 0.0


@pytest.mark.parametrize("records, nothing, reason", [
    ([{"signal_groups": 0.0, "grad_norm": 0.0}] * 3, True, "3 of 3 steps had no group"),
    ([{"signal_groups": 0.0, "grad_norm": 0.1}] * 2 + [{"signal_groups": 0.5, "grad_norm": 0.1}], True,
     "2 of 3 steps had no group"),
    ([{"signal_groups": 0.5, "grad_norm": 0.0}] * 2, True, "weights did not move"),  # e.g. a zero learning signal
    ([{"signal_groups": 0.0, "grad_norm": 0.2}] + [{"signal_groups": 0.25, "grad_norm": 0.2}] * 2, False, ""),
])
def test_a_run_learned_nothing_when_most_steps_lack_signal_or_no_gradient_moved_it(records, nothing, reason):
    summary = summarise([{"step": i + 1, **r} for i, r in enumerate(records)])
    assert summary["learned_nothing"] is nothing and reason in summary["reason"]
    assert (summary["reason"] == "") is not nothing


@pytest.fixture(scope="module")
def zero_reward_runs(tmp_path_factory):
    """GRPO and ConSPO trained two steps each on problems whose every answer is unreachable (every reward 0)."""
    root = tmp_path_factory.mktemp("zero-reward")
    build_tiny_model(root / "model", steps=2, batch_size=4, train_size=16, layers=1)  # untrained: fast to build
    problems = [dict(task, answer="-123456789") for task in make_tasks("math500", 8, seed=0)]
    write_jsonl(root / "train.jsonl", problems)
    runs = {}
    for method in ("grpo", "conspo"):
        cfg = parse_config({"name": method, "seed": 0, "model": {"path": str(root / "model")},
                            "data": {"train": str(root / "train.jsonl")}, "method": {"name": method},
                            "rollout": {"group_size": 4, "max_new_tokens": 8},
                            "train": {"prompts_per_step": 4, "max_tokens_per_micro_batch": 2048, "total_steps": 2,
                                      "lr": 1e-3, "checkpoint_every": 2},
                            "verifier": {"workers": 1}})
        train(cfg, root / method)
        runs[method] = root / method
    return root, runs


def test_a_zero_reward_run_logs_no_signal_and_says_it_learned_nothing(zero_reward_runs):
    _, runs = zero_reward_runs
    for method, out in runs.items():
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [line["signal_groups"] for line in lines] == [0.0, 0.0] and all(line["reward"] == 0 for line in lines)
        learning = json.loads((out / "done.json").read_text())["learning"]
        assert learning["learned_nothing"] and learning["steps_without_signal"] == 2, method
        assert "2 of 2 steps had no group with a reward signal" in learning["reason"]
        log = (out / "train.log").read_text()
        assert "WARNING this run learned nothing: 2 of 2 steps" in log and "signal 0.00" in log
    grpo = json.loads((runs["grpo"] / "done.json").read_text())["learning"]
    assert grpo["max_grad_norm"] == 0.0 and "the weights did not move" in grpo["reason"]  # zero advantages


def write_metrics(path: Path, correct: list[int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "MATH", "metric": "pass@1", "value": 100 * sum(correct) / len(correct),
                                "k": 1, "n_problems": len(correct), "se_problems": 0.0, "se_generation": 0.0,
                                "per_problem_correct": correct}))
    return str(path)


def render_table(root: Path, done: dict[str, Path], correct: dict[str, list[int]]) -> str:
    """Base model, GRPO and ConSPO on one benchmark (`correct`: per-problem results of each row, at step 2), the
    trained rows from the runs whose done.json are `done`; the table's Markdown."""
    cells = [{"model": "tiny", "dataset": "zero", "method": BASE_MODEL, "runs": [], "seeds": [], "selections": [],
              "trained": [], "metrics": {"MATH": write_metrics(root / "base" / "MATH.metrics.json",
                                                               correct[BASE_MODEL])}}]
    for method in ("GRPO", "ConSPO"):
        run = method.lower()
        metrics = write_metrics(root / "evals" / run / "step-000002" / "MATH.metrics.json", correct[method])
        select.main(["select", "--run", run, "--metrics", metrics, "--out", str(root / "selected" / f"{run}.json")])
        cells.append({"model": "tiny", "dataset": "zero", "method": method, "runs": [run], "seeds": [0],
                      "selections": [str(root / "selected" / f"{run}.json")], "trained": [str(done[run])]})
    spec = {"table": "zero", "number": None, "title": "every reward 0", "benchmarks": ["MATH"],
            "methods": [BASE_MODEL, "GRPO", "ConSPO"], "blocks": [{"model": "tiny", "dataset": "zero"}],
            "reference": "ConSPO", "validation": None, "benchmark_labels": {"MATH": "MATH"},
            "metrics": {"MATH": "pass@1"}, "cells": cells}
    (root / "spec.json").write_text(json.dumps(spec))
    args = ["--spec", str(root / "spec.json"), "--cells", str(root / "cells.csv"), "--paired", str(root / "paired.csv")]
    assert tables.main(["tables", "aggregate", *args]) == 0
    assert tables.main(["tables", "render", *args, "--published", str(ROOT / "config" / "published_tables.csv"),
                        "--out-prefix", str(root / "table")]) == 0
    return (root / "table.md").read_text()


def rows_of(markdown: str) -> dict[str, str]:
    """{method: its MATH cell} of the first table of a Markdown rendering."""
    lines = [line for line in markdown.split("## Paired")[0].splitlines() if line.startswith("| ")][1:]
    return {parts[0]: parts[2] for parts in ([p.strip() for p in line.strip("|").split("|")] for line in lines)}


def test_the_table_marks_runs_without_signal_and_bolds_no_method_on_the_tie(zero_reward_runs, tmp_path):
    _, runs = zero_reward_runs
    zeros = {row: [0] * 8 for row in (BASE_MODEL, "GRPO", "ConSPO")}
    markdown = render_table(tmp_path / "zero", {m: out / "done.json" for m, out in runs.items()}, zeros)
    cells = rows_of(markdown)
    assert cells["GRPO"].startswith(f"0.0{NO_SIGNAL_MARK} ± 0.0")
    assert cells["ConSPO"].startswith(f"0.0{NO_SIGNAL_MARK} ± 0.0")
    assert not cells[BASE_MODEL].startswith(f"0.0{NO_SIGNAL_MARK}")
    assert not any("**" in cell or "<u>" in cell for cell in cells.values())  # nobody is "best" on the tie
    assert f"{NO_SIGNAL_MARK} GRPO on tiny learned nothing, so it is not ranked: 2 of 2 steps had no group" in markdown
    html = (tmp_path / "zero" / "table.html").read_text()
    assert 'data-no-signal="True"' in html and "<b>" not in html.split("<table")[1] and "learned nothing" in html
    csv = (tmp_path / "zero" / "table.csv").read_text()
    assert "every update's gradient was exactly zero" in csv


def test_runs_that_learned_are_ranked_and_bolded(tmp_path):
    """The same table with runs that learned: ranks as before (and a full tie of them still marks none)."""
    done = {}
    for run in ("grpo", "conspo"):
        done[run] = tmp_path / f"{run}.json"
        done[run].write_text(json.dumps({"learning": summarise([{"signal_groups": 0.5, "grad_norm": 0.3}])}))
    better = {BASE_MODEL: [0] * 8, "GRPO": [1] + [0] * 7, "ConSPO": [1, 1] + [0] * 6}
    cells = rows_of(render_table(tmp_path / "learned", done, better))
    assert cells["ConSPO"].startswith("**25.0**") and cells["GRPO"].startswith("<u>12.5</u>")
    assert NO_SIGNAL_MARK not in "".join(cells.values())
    silent = tmp_path / "silent.json"  # a higher value from a run that learned nothing is not "best"
    silent.write_text(json.dumps({"learning": summarise([{"signal_groups": 0.0, "grad_norm": 0.0}])}))
    cells = rows_of(render_table(tmp_path / "mixed", {"grpo": done["conspo"], "conspo": silent}, better))
    assert cells["GRPO"].startswith("**12.5**") and cells["ConSPO"].startswith(f"25.0{NO_SIGNAL_MARK} ")
    tie = {BASE_MODEL: [0] * 8, "GRPO": [1] + [0] * 7, "ConSPO": [1] + [0] * 7}
    assert not any("**" in cell for cell in rows_of(render_table(tmp_path / "tie", done, tie)).values())
