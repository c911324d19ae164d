"""A user changes one method's parameter and reruns the workflow (executed, not a dry run): exactly that method's
run trains again from step 0, its table cells change, no other run or evaluation is touched, and no folder is deleted
by hand (the earlier run's files are kept under the run's superseded/ folder).

A reduced copy of config/tiny.yaml so that it takes well under two minutes: one model (the session's warm-started
tiny policy, placed where the workflow's prepare_model would write it), one training set of 16 prompts, Table 1 with
GRPO and ConSPO on one benchmark (48 problems x 8 samples), two steps at lr 1e-3 with one checkpoint: enough for
tau = 10 and tau = 1 to end in different cells (measured: 4.69 and 3.91), where lr 1e-4 left them equal. Supersedes the dry-run job-list check that
tests/test_tiny_dag.py held."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import snakemake
import yaml

from conftest_models import tiny_model_path  # noqa: F401  (session fixture)
from test_dag import copy_workflow, run_snakemake
from test_tiny_dag import scheduled

ROOT = Path(__file__).resolve().parent.parent
GRPO = "tiny-a--deepscaler-preview--grpo"
CONSPO = "tiny-a--deepscaler-preview--conspo"

pytestmark = pytest.mark.skipif(not snakemake.__version__.startswith("9.27"),
                                reason="the job listing parsed here is snakemake 9.27's")


def reduced_tiny_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["models"] = {"tiny-a": config["models"]["tiny-a"]}
    config["training"]["train"].update(total_steps=2, checkpoint_every=2, lr=1.0e-3, prompts_per_step=4,
                                       max_tokens_per_micro_batch=1024)  # two steps of 4 x 4 rollouts, as measured
    config["training"]["rollout"]["group_size"] = 4
    config["datasets"] = {"DeepScaleR-Preview": {"prepare": {"dataset": "deepscaler", "source": "synthetic", "n": 16,
                                                             "seed": 0}, "n_prompts": 16}}
    config["benchmarks"] = {"MATH500": {"prepare": {"dataset": "math500", "source": "synthetic", "n": 48, "seed": 0},
                                        "metric": "avg@8", "samples": 8}}  # 384 samples: a cell that moves
    config["methods"] = {"GRPO": {"objective": "grpo"}, "ConSPO": {"objective": "conspo"}}
    config["tables"] = {"table1": {"number": 1, "title": "reduced", "base_model": False, "reference": "ConSPO",
                                   "blocks": [{"model": "tiny-a", "dataset": "DeepScaleR-Preview"}],
                                   "methods": ["GRPO", "ConSPO"], "benchmarks": ["MATH500"]}}
    config["figures"] = {}
    return config


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(modification time, size) of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def cell_values(workdir: Path) -> dict[str, float]:
    cells = pd.read_csv(workdir / "results" / "tables" / "table1" / "cells.csv")
    cells = cells[cells["benchmark"] == "MATH500"]
    return dict(zip(cells["runs"], cells["value"]))  # one seed: a cell's runs are its one run


def samples_accuracy(samples: str) -> float:
    """avg@8 in percent from a samples file (every problem has 8 samples): the share of correct samples."""
    rows = [json.loads(line) for line in samples.splitlines()]
    return 100.0 * sum(row["correct"] for row in rows) / len(rows)


def test_changing_one_method_parameter_retrains_exactly_its_runs(tmp_path, tiny_model_path):
    workdir = copy_workflow(tmp_path)
    shutil.copytree(tiny_model_path, workdir / "results" / "models" / "tiny-a")  # what prepare_model would build
    config = reduced_tiny_config()
    (workdir / "config" / "reduced.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = ("table1", "--cores", "2", "--configfile", "config/reduced.yaml")  # --configfile takes 1+
    first = run_snakemake(workdir, *command)
    assert first.returncode == 0, first.stderr[-4000:]
    assert sorted(run for rule, run in scheduled(first.stdout + first.stderr) if rule == "train") == [CONSPO, GRPO]
    runs, evals = workdir / "results" / "runs", workdir / "results" / "evals"
    untouched = {"grpo run": snapshot(runs / GRPO), "grpo evaluations": snapshot(evals / GRPO),
                 "model": snapshot(workdir / "results" / "models"), "data": snapshot(workdir / "results" / "data")}
    before = cell_values(workdir)
    first_samples = (evals / CONSPO / "step-000002" / "MATH500.samples.jsonl").read_text()

    config["methods"]["ConSPO"]["params"] = {"tau": 1.0}  # the user's change: ConSPO's temperature, 10 -> 1
    (workdir / "config" / "reduced.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rerun = run_snakemake(workdir, *command)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    jobs = scheduled(rerun.stdout + rerun.stderr)
    assert [run for rule, run in jobs if rule == "train"] == [CONSPO]
    assert {run for rule, run in jobs if rule in ("evaluate_checkpoint", "select_checkpoint")} == {CONSPO}
    assert not any(rule.startswith("prepare") for rule, _ in jobs)

    # the ConSPO run started over from step 0, with the new value, its earlier files kept aside
    run = runs / CONSPO
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    log = (run / "train.log").read_text()
    assert "resumed from" not in log and "method.params.tau differs" in log
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["params"]["tau"] == 1.0
    (aside,) = (run / "superseded").iterdir()
    assert yaml.safe_load((aside / "config.yaml").read_text())["method"]["params"]["tau"] == 10.0
    assert (aside / "checkpoints" / "step-000002").is_dir() and (aside / "state" / "step-000002").is_dir()
    assert [json.loads(line)["step"] for line in (aside / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # its evaluation and table cell changed; nothing of the GRPO run, the model or the data was touched
    new_samples = (evals / CONSPO / "step-000002" / "MATH500.samples.jsonl").read_text()
    assert new_samples != first_samples
    after = cell_values(workdir)  # the cell is the retrained run's (its value may tie with the old one's by chance)
    assert after[GRPO] == before[GRPO] and after[CONSPO] == pytest.approx(samples_accuracy(new_samples))
    assert before[CONSPO] == pytest.approx(samples_accuracy(first_samples)), (before, after)
    assert untouched == {"grpo run": snapshot(runs / GRPO), "grpo evaluations": snapshot(evals / GRPO),
                         "model": snapshot(workdir / "results" / "models"),
                         "data": snapshot(workdir / "results" / "data")}
    # and a third invocation has nothing left to do
    assert "Nothing to be done" in run_snakemake(workdir, *command, "--dry-run").stdout
