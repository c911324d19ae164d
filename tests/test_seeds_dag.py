"""Two training seeds end to end: a small config built from config/tiny.yaml (tiny-a, one table of GRPO and ConSPO
on two small benchmarks, a validation benchmark, two seeds, two training steps) runs through the real workflow in a
temporary copy. The tables carry seed means, seed-aware errors and per-seed values; a seed's rerun is that run's job
alone; one seed fewer or one more changes no other run; the report shows Table 1's verdict plot in Chromium.

The tiny-a model folder is the session's warm-started tiny model (tests/conftest_models.py builds it with tiny-a's
settings for the model tests), copied in rather than built again; every other rule runs."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest_models import tiny_model_path  # noqa: F401  (session fixture)
from snakemake.utils import validate
from test_tiny_dag import scheduled

from conspo.plan import AVERAGE, Plan, deep_merge
from conspo.tables import read_cells

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "slurm", "profiles")
CONFIG = "config/two_seeds.yaml"
RUN = "tiny-a--deepscaler-preview"


def two_seed_config() -> dict:
    tiny = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    return {
        "results": "results", "seed": 0, "seeds": [0, 1],
        "training": deep_merge(tiny["training"], {"train": {"total_steps": 2, "checkpoint_every": 2,
                                                             "prompts_per_step": 4, "max_tokens_per_micro_batch": 1024},
                                                   "rollout": {"group_size": 4}}),  # small steps: bookkeeping
        "evaluation": tiny["evaluation"],
        "models": {"tiny-a": tiny["models"]["tiny-a"]},
        "datasets": {"DeepScaleR-Preview": tiny["datasets"]["DeepScaleR-Preview"]},
        # a few problems each: this test checks the seeds' bookkeeping, not accuracy
        "benchmarks": {"AIME24": deep_merge(tiny["benchmarks"]["AIME24"], {"prepare": {"n": 8}}),
                       "MATH500": deep_merge(tiny["benchmarks"]["MATH500"], {"prepare": {"n": 16}}),
                       "Validation": {"prepare": {"dataset": "amc", "source": "synthetic", "n": 8, "seed": 1},
                                      "metric": "avg@4", "samples": 4}},
        "selection": {"validation": "Validation"},
        "methods": {name: tiny["methods"][name] for name in ("GRPO", "ConSPO")},
        "tables": {"table1": {"number": 1, "title": "tiny-a, two seeds", "reference": "ConSPO",
                              "blocks": [{"model": "tiny-a", "dataset": "DeepScaleR-Preview"}],
                              "methods": ["GRPO", "ConSPO"], "benchmarks": ["AIME24", "MATH500"]}},
        "figures": {},
    }


def snakemake(workdir: Path, *args: str) -> str:
    result = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def plan_of(config: dict) -> Plan:
    config = copy.deepcopy(config)
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return Plan.from_config(config)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny_model_path):  # noqa: F811
    workdir = tmp_path_factory.mktemp("seeds")
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
    config = two_seed_config()
    (workdir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(tiny_model_path, workdir / "results" / "models" / "tiny-a")
    snakemake(workdir, "all", "--cores", "2", "--configfile", CONFIG)
    return workdir, config


def test_tables_carry_seed_means_and_seed_aware_errors(two_seeds):
    workdir, config = two_seeds
    results = workdir / "results"
    cells = read_cells(results / "tables" / "table1" / "cells.csv")
    assert set(cells["selection"]) == {"best", "last", "validated"}
    for row in cells[cells["selection"] == "best"].itertuples():
        runs = row.runs.split(";")
        assert runs == [f"{RUN}--{row.method.lower()}", f"{RUN}--{row.method.lower()}--seed1"] and row.seeds == 2
        per_seed = [float(v) for v in row.per_seed.split(";")]
        selected = [json.loads((results / "selected" / f"{run}.json").read_text())["best"]["benchmarks"]
                    for run in runs]
        benchmarks = ["AIME24", "MATH500"] if row.benchmark == AVERAGE else [row.benchmark]
        expected = [sum(s[b]["value"] for b in benchmarks) / len(benchmarks) for s in selected]
        assert per_seed == pytest.approx(expected, abs=1e-3)  # each seed's run, at its own best checkpoint
        assert row.value == pytest.approx(sum(expected) / 2, abs=1e-3)  # the cell: their mean
        assert row.se_seeds == pytest.approx(abs(expected[0] - expected[1]) / 2, abs=1e-3)  # sd / sqrt(2)
        assert row.se == pytest.approx(math.hypot(row.se_problems, row.se_seeds), rel=1e-6)
    paired = pd.read_csv(results / "tables" / "table1" / "paired.csv")
    best = paired[paired["selection"] == "best"]
    assert list(best["method"]) == ["GRPO"] * 3 and list(best["benchmark"]) == ["AIME24", "MATH500", AVERAGE]
    assert best["seeds_measured"].all() and (best["comparisons"] == 1).all()
    assert set(best["verdict"]) <= {"better", "worse", "not distinguishable"}
    rendered = pd.read_csv(results / "tables" / "table1" / "table1.csv", dtype=str)
    assert list(rendered["seeds"]) == ["0;1"] * 6 and all(len(v.split(";")) == 2 for v in rendered["AIME24 per seed"])
    assert list(rendered["checkpoint"]) == ["best", "best", "last", "last", "validated", "validated"]
    assert json.loads((results / "data" / "validation" / "deepscaler-preview.json").read_text())["shared"] == 0
    markdown = (results / "tables" / "table1" / "table1.md").read_text()
    assert "## Checkpoint chosen on the validation benchmark Validation" in markdown
    assert "Each cell: the mean over 2 training runs (seeds) ± its standard error over problems and seeds" in markdown
    assert "run-to-run variance is not measured" not in markdown


def test_a_seed_rerun_is_its_own_job_and_seeds_add_or_drop_nothing_else(two_seeds):
    workdir, config = two_seeds
    assert "Nothing to be done" in snakemake(workdir, "all", "--cores", "2", "--configfile", CONFIG, "--dry-run")
    # rerunning one seed's run: its own training, evaluations and selection, then the table; no other run
    seed1 = f"{RUN}--conspo--seed1"
    jobs = scheduled(snakemake(workdir, "all", "--cores", "2", "--configfile", CONFIG, "--dry-run",
                               "--forcerun", f"results/runs/{seed1}/done.json"))
    assert {run for _, run in jobs if run} == {seed1}
    assert sorted(rule for rule, run in jobs if run) == sorted(["train", "evaluate_checkpoint", "select_checkpoint",
                                                              "training_curves"])  # one job: its one checkpoint
    # the seed-0 runs are today's one-seed runs: same names, same run configs on disk
    one_seed = plan_of({**config, "seeds": [0]})
    assert set(one_seed.runs) == {f"{RUN}--grpo", f"{RUN}--conspo"}
    for run in one_seed.runs:
        assert yaml.safe_load((workdir / "results" / "runs" / run / "run.yaml").read_text()) == one_seed.run_config(run)
    for seeds, new_runs in (([0], set()), ([0, 1, 2], {f"{RUN}--grpo--seed2", f"{RUN}--conspo--seed2"})):
        overlay = workdir / "config" / f"seeds-{len(seeds)}.yaml"
        overlay.write_text(yaml.safe_dump({"seeds": seeds}))
        jobs = scheduled(snakemake(workdir, "all", "--cores", "2", "--dry-run", "--configfile", CONFIG,
                                   str(overlay.relative_to(workdir))))
        assert {run for _, run in jobs if run} == new_runs, seeds
        assert not any(rule in ("prepare_model", "prepare_benchmark", "check_validation") for rule, _ in jobs)


@pytest.mark.skipif(not Path("/usr/bin/chromedriver").exists(), reason="needs Debian chromium and chromium-driver")
def test_report_shows_the_verdict_plot_and_per_seed_values(two_seeds):
    from conspo.report import inspect_report

    workdir, _ = two_seeds
    snakemake(workdir, "--cores", "1", "--report", "results/report.html", "--configfile", CONFIG)
    seen = inspect_report(str(workdir / "results" / "report.html"), str(workdir / "results" / "report.png"),
                          ("table1-verdicts.png", "table1.html"))
    plot = seen["opened"]["table1-verdicts.png"]
    assert plot["found"] and plot["mime"] == "image/png" and plot["width"] > 800 and plot["height"] > 200
    assert plot["caption"].startswith("table1, verdict plot") and "Bonferroni" in plot["caption"]
    table = seen["opened"]["table1.html"]
    assert table["tables"] == 5  # best, last, validated; verdicts at the best and the validated checkpoints
    assert "Paired comparison: ConSPO − method (best checkpoints)" in table["text"]
    hover = [text for text in table["hover"] if text.startswith("mean of 2 seeds: ")]
    assert len(hover) == 3 * 2 * 3 and all("(seed 0)" in text and "(seed 1)" in text for text in hover)
