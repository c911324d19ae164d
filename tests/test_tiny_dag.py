"""The embedded default end to end: README command 1's Makefile recipe (`make run`) executed in a copy of the
checkout that reuses the environment already built, then: every table and figure exists, a second invocation has
nothing to do, one cell regenerates alone (and redraws only its own benchmark's samples), the report opens in
Chromium (a changed method retraining only its own runs, executed: tests/test_dag_rerun.py). The default shows
learning: Table 1's GRPO and ConSPO rows beat the base model by more than 3 standard errors and every Figure 2 panel
varies. No test keeps its own copy of that command line: a broken `make run` fails here. In `make test` (CI): ~10 min
of the suite on 2 cores, the DAG itself 89 jobs."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CELL = "results/evals/tiny-a--deepscaler-preview--conspo/step-000020/AIME24.metrics.json"



def snakemake(workdir: Path, *args: str, timeout: int = 2400) -> str:
    result = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def scheduled(output: str) -> list[tuple[str, str]]:
    """(rule, run or '') of every job a dry run lists."""
    jobs, rule = [], None
    for line in output.splitlines():
        start = re.match(r"^(?:local)?rule (\w+):$", line)
        if start:
            rule = start.group(1)
            jobs.append((rule, ""))
        elif rule and line.strip().startswith("wildcards:"):
            run = re.search(r"run=([^,\s]+)", line)
            jobs[-1] = (rule, run.group(1) if run else "")
    return jobs


def report(pytestconfig, line: str) -> None:
    """A line in the suite's output (the CI log) even while pytest captures the test's own output."""
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        pytestconfig.pluginmanager.getplugin("terminalreporter").write_line(line)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, pytestconfig):
    """`make run` (README command 1) in a copy of the checkout; its recipe lines and exit status go to the test log."""
    workdir = tmp_path_factory.mktemp("tiny") / "checkout"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):  # the checkout's files as a clone has them (no outputs, caches or .venv)
        if (ROOT / name).is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, workdir / name)
    (workdir / ".venv").symlink_to(sys.prefix)  # setup.sh finds its stamp: nothing to do
    started = time.perf_counter()
    result = subprocess.run(["make", "run"], cwd=workdir, capture_output=True, text=True, timeout=2400)
    (workdir.parent / "make-run.log").write_text(result.stdout + result.stderr)
    say = functools.partial(report, pytestconfig)
    for line in result.stdout.splitlines():
        if line.startswith(("bash scripts/setup.sh", ".venv/bin/")):  # the commands make echoes from its recipe
            say(f"[make run] {line}")
    say(f"[make run] exit {result.returncode} after {time.perf_counter() - started:.0f} s")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return workdir


def test_every_table_and_figure_is_built(tiny_run):
    results = tiny_run / "results"
    for table in [*(f"table{i}" for i in range(1, 7)), "beyond"]:
        for ext in ("csv", "md", "tex", "html"):
            assert (results / "tables" / table / f"{table}.{ext}").stat().st_size > 0
    assert (results / "figures" / "figure1.png").exists() and (results / "figures" / "figure2.png").exists()
    assert len(list((results / "figures" / "curves").glob("*.png"))) == 10  # one per distinct run
    assert (results / "report.html").stat().st_size > 100_000


def test_second_invocation_has_nothing_to_do(tiny_run):
    assert "Nothing to be done" in snakemake(tiny_run, "--cores", "2", "--dry-run", "all")


def test_one_cell_regenerates_alone(tiny_run):
    (tiny_run / CELL).unlink()
    output = snakemake(tiny_run, "--cores", "2", CELL)
    assert [rule for rule, _ in scheduled(output)] == ["evaluate_checkpoint"]
    assert (tiny_run / CELL).exists()


@pytest.mark.skipif(not Path("/usr/bin/chromedriver").exists(), reason="needs Debian chromium and chromium-driver")
def test_report_opens_in_chromium(tiny_run):
    from conspo.report import inspect_report

    seen = inspect_report(str(tiny_run / "results" / "report.html"), str(tiny_run / "results" / "report.png"),
                          ("table1.html", "table6.html", "beyond.html"))
    assert {"Tables", "Figures", "Training curves"} <= set(seen["text"].split("\n"))
    assert seen["opened"]["table1.html"]["tables"] == 3
    assert "w/o scheduled margin" in seen["opened"]["table6.html"]["text"]
    assert "CLIPO" in seen["opened"]["beyond.html"]["text"] and "CEPO" in seen["opened"]["beyond.html"]["text"]
    assert (tiny_run / "results" / "report.png").stat().st_size > 10_000


def test_table1_shows_grpo_and_conspo_above_the_base_model(tiny_run, pytestconfig):
    """The rendered Table 1 (best checkpoints): each method's average over the seven benchmarks exceeds the base
    model's by more than 3 standard errors of the difference (the two cells' standard errors combined)."""
    import math

    import pandas as pd

    cells = pd.read_csv(tiny_run / "results" / "tables" / "table1" / "cells.csv")
    average = cells[(cells["selection"] == "best") & (cells["benchmark"] == "Avg")].set_index("method")
    base = average.loc["Base Model"]
    for method in ("GRPO", "ConSPO"):
        row = average.loc[method]
        gain, se = row["value"] - base["value"], math.hypot(row["se_problems"], base["se_problems"])
        report(pytestconfig, f"Table 1, {method}: {row['value']:.2f} vs base {base['value']:.2f}: "
                             f"gain {gain:+.2f} ± {se:.2f}, z = {gain / se:.1f}")
        assert gain > 3 * se, method


def test_figure2_panels_vary(tiny_run, pytestconfig):
    from conspo.figures import read_data

    panels = read_data(str(tiny_run / "results" / "figures" / "figure2.png"))["panels"]
    assert set(panels) == {"tau", "M", "alpha"}
    for name, panel in panels.items():
        means = dict(zip(panel["values"], (round(m, 2) for m in panel["mean"])))
        report(pytestconfig, f"Figure 2, {name}: {means}")
        assert len(set(panel["mean"])) == len(panel["values"]) == 2, name


def test_a_cell_drawn_anew_leaves_the_other_samples_untouched(tiny_run):
    """Deleting one benchmark's samples and metrics and asking for the cell reruns the checkpoint's one evaluation
    job: it draws that benchmark's samples again (the same ones: seeded per sample) and only recomputes the other
    benchmarks' metrics from the samples on disk."""
    evals = (tiny_run / CELL).parent
    samples = evals / "AIME24.samples.jsonl"
    drawn = samples.read_text()
    others = {path.name: path.stat().st_mtime_ns for path in evals.glob("*.samples.jsonl") if path != samples}
    assert len(others) == 6
    samples.unlink()
    (tiny_run / CELL).unlink()
    output = snakemake(tiny_run, "--cores", "2", CELL)
    assert [rule for rule, _ in scheduled(output)] == ["evaluate_checkpoint"]
    assert samples.read_text() == drawn
    assert {path.name: path.stat().st_mtime_ns for path in evals.glob("*.samples.jsonl") if path != samples} == others
    log = (evals / "evaluate.log").read_text().split("verifier:")[-1]
    assert "AIME24: 0 of 512 samples on disk" in log and "generating 512 samples" in log
