"""The report rules of the real workflow on the tiny config, and results/report.html in headless Chromium.

Training and evaluation are stood in for by files written from the plan (done.json, metrics.jsonl, metrics files,
selections); Snakemake then runs the real spec/aggregate/render/figure/curve rules and `--report`.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from conspo import select
from conspo.plan import Plan, write_yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "slurm", "profiles")
HAVE_CHROMIUM = Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()

pytestmark = pytest.mark.slow  # ~30 rule jobs, each a fresh `conspo` process (several minutes on two busy cores)


def tiny_plan(workdir: Path) -> Plan:
    config = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    validate(config, str(workdir / "workflow" / "schemas" / "config.schema.yaml"))
    return Plan.from_config(copy.deepcopy(config))


def write_metrics(path: str, benchmark: str, k: int, rng: random.Random) -> None:
    counts = [rng.randint(0, k) for _ in range(8)]
    value = 100 * sum(counts) / (k * len(counts))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"benchmark": benchmark, "metric": f"avg@{k}", "value": value, "k": k,
                                      "n_problems": 8, "se_problems": 5.0, "se_generation": 2.0,
                                      "per_problem_correct": counts}))
    Path(path.replace(".metrics.json", ".samples.jsonl")).write_text("")


def stand_in_for_training_and_evaluation(workdir: Path) -> Plan:
    """Every file the train/evaluate/select rules would write for the tiny config, in DAG order."""
    plan = tiny_plan(workdir)
    rng = random.Random(0)
    os.chdir(workdir)
    for dataset in plan.datasets:
        Path(plan.train_data(dataset)).parent.mkdir(parents=True, exist_ok=True)
        Path(plan.train_data(dataset)).write_text("")
    for bench in plan.benchmarks:
        Path(plan.benchmark_data(bench)).parent.mkdir(parents=True, exist_ok=True)
        Path(plan.benchmark_data(bench)).write_text("")
    for model in plan.models:
        Path(plan.model_dir(model)).mkdir(parents=True, exist_ok=True)
    for name in plan.runs:
        run_dir = Path(plan.run_dir(name))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(plan.run_config(name), str(run_dir / "run.yaml"))
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "reward": rng.random(), "pass_rate": rng.random(), "response_length": 10 + s})
            + "\n" for s in range(1, 5)))
        (run_dir / "done.json").write_text("{}")
    for model in plan.models:
        for bench in plan.base_benchmarks(model):
            write_metrics(plan.base_metrics(model, bench), bench, plan.benchmarks[bench]["samples"], rng)
    for name in plan.runs:
        files = plan.run_evaluations(name)
        for path in files:
            bench = Path(path).name.split(".")[0]
            write_metrics(path, bench, plan.benchmarks[bench]["samples"], rng)
        Path(plan.selection(name)).parent.mkdir(parents=True, exist_ok=True)
        select.main(["select", "--run", name, "--metrics", *files, "--out", plan.selection(name)])
    return plan


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, workdir / name)
    cwd = os.getcwd()
    try:
        plan = stand_in_for_training_and_evaluation(workdir)
    finally:
        os.chdir(cwd)
    dry = subprocess.run([SNAKEMAKE, "--cores", "2", "--dry-run", "all"], cwd=workdir, capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    for rule in ("train", "evaluate_checkpoint", "evaluate_base_model", "select_checkpoint", "prepare_model"):
        assert f"rule {rule}:" not in dry.stdout  # nothing upstream of the tables is re-run
    run = subprocess.run([SNAKEMAKE, "--cores", "2", "all"], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = subprocess.run([SNAKEMAKE, "--cores", "1", "--report", "results/report.html"], cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    return workdir, plan


def test_report_rules_write_every_table_and_figure(tiny_report):
    workdir, plan = tiny_report
    for table in plan.tables:
        for ext in ("csv", "md", "tex", "html"):
            assert (workdir / f"{plan.table_prefix(table)}.{ext}").stat().st_size > 0
        assert (workdir / f"{plan.table_prefix(table)}-verdicts.png").stat().st_size > 0
    for name in ("figure1", "figure2"):
        assert (workdir / plan.results / "figures" / f"{name}.png").stat().st_size > 0
    assert len(list((workdir / plan.results / "figures" / "curves").glob("*.png"))) == len(plan.runs)
    html = (workdir / f"{plan.table_prefix('table2')}.html").read_text()
    assert html.count('<tr class="block">') == 2 * 2  # two model blocks, in the best and the last tables
    assert "no published value" in html


@pytest.mark.skipif(not HAVE_CHROMIUM, reason="needs Debian chromium and chromium-driver")
def test_report_opens_in_chromium_with_tables_and_figures(tiny_report):
    from conspo.report import inspect_report

    workdir, plan = tiny_report
    screenshot = workdir / plan.results / "report.png"  # kept beside the report it shows
    seen = inspect_report(str(workdir / plan.results / "report.html"), str(screenshot),
                          ("table1.html", "table2.html", "beyond.html", "figure2.png", "table1-verdicts.png"))
    assert screenshot.stat().st_size > 10_000
    for category in ("Tables", "Figures", "Training curves"):
        assert category in seen["text"]
    names = {Path(p).name: mime for p, mime in seen["results"].items()}
    assert {f"{t}.html" for t in plan.tables} <= set(names)
    assert names["table1.html"] == "text/html" and names["figure1.png"] == "image/png"
    assert len([n for n in names if n.endswith(".png")]) == 2 + len(plan.runs) + len(plan.tables)  # verdict plots
    table1 = seen["opened"]["table1.html"]
    assert table1["tables"] == 3  # best, last, paired differences
    assert "ConSPO" in table1["text"] and "GRPO" in table1["text"] and "Base Model" in table1["text"]
    assert "tiny-b" in seen["opened"]["table2.html"]["text"]
    beyond = seen["opened"]["beyond.html"]  # the table beyond the paper, beside Tables 1-6
    assert beyond["tables"] == 3 and beyond["text"].strip().startswith("Beyond the paper: ConSPO vs CLIPO and CEPO")
    assert all(name in beyond["text"] for name in ("CLIPO", "CEPO", "ConSPO", "GRPO", "no published value"))
    assert seen["opened"]["figure2.png"]["bytes"] > 1000
    verdicts = seen["opened"]["table1-verdicts.png"]  # Table 1's verdict plot, decoded by Chromium
    assert verdicts["mime"] == "image/png" and verdicts["width"] > 800 and verdicts["height"] > 200
    assert verdicts["caption"].startswith("table1, verdict plot")
    assert "run-to-run variance is not measured" in table1["text"]  # the tiny config has one seed
