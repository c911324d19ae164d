"""Workflow timings: dry run of the paper's grid (slurm profile), the whole tiny DAG, one regenerated cell; optionally
the same for an earlier commit, one run each, for a before/after comparison on the same machine.

    python -m benchmarks dag                     # dry run of config/paper.yaml only
    python -m benchmarks dag --tiny              # also run the embedded default end to end and regenerate one cell
    python -m benchmarks dag --tiny --before REF # the same for commit REF (its package and workflow), first

Everything runs in temporary copies of the workflow (an earlier commit's with that commit's `conspo` package on
PYTHONPATH); the record is benchmarks/records/dag.json, with the load average at the start and end of each part.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import print_table, write_record

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "slurm", "profiles"]
PACKAGES = ["conspo", "baselines"]
CELL_RUN = "tiny-a--deepscaler-preview--conspo"  # one benchmark of one checkpoint: ConSPO of Table 1, AIME24


def checkout(ref: str | None, dest: Path) -> Path:
    """The workflow (and, for an earlier commit, its packages) of `ref` in `dest`; None: the working tree."""
    dest.mkdir(parents=True, exist_ok=True)
    if ref is None:
        subprocess.run(["cp", "-r", *WORKFLOW_FILES, str(dest)], cwd=ROOT, check=True)
    else:
        archive = subprocess.run(["git", "archive", ref, *WORKFLOW_FILES, *PACKAGES], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def timed_snakemake(workdir: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return elapsed, result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run."""
    counts = Counter()
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match is None:
            break
        counts[match.group(1)] = int(match.group(2))
    return dict(counts)


def evaluation_jobs(counts: dict[str, int]) -> int:
    return sum(n for rule, n in counts.items() if rule.startswith("evaluate_"))


def measure(workdir: Path, *, tiny: bool, cores: int, env: dict) -> tuple[dict, list[list]]:
    """Paper-grid dry run, and with `tiny` the tiny DAG end to end and one regenerated cell, in `workdir`."""
    record, rows = {}, []
    load = os.getloadavg()
    seconds, output = timed_snakemake(workdir, "--profile", "slurm", "--dry-run", "--quiet", "rules", "--",
                                      "tables", env=env)
    counts = job_counts(output)
    record["paper_dry_run"] = {"seconds": seconds, "jobs": counts.get("total"), "train": counts.get("train"),
                               "evaluation_jobs": evaluation_jobs(counts), "rules": counts}
    rows.append(["paper grid dry run (slurm profile)", seconds, counts.get("total"), evaluation_jobs(counts)])
    if tiny:
        load = os.getloadavg()
        seconds, output = timed_snakemake(workdir, "--cores", str(cores), "all", env=env)
        counts = job_counts(output)
        record["tiny_full"] = {"seconds": seconds, "jobs": counts.get("total"), "cores": cores,
                               "evaluation_jobs": evaluation_jobs(counts), "rules": counts,
                               "load_average_start": load, "load_average_end": os.getloadavg()}
        rows.append(["tiny DAG end to end", seconds, counts.get("total"), evaluation_jobs(counts)])
        cell = next((workdir / "results" / "evals" / CELL_RUN).glob("step-*/AIME24.metrics.json"))
        cell.unlink()
        target = str(cell.relative_to(workdir))
        seconds, output = timed_snakemake(workdir, "--cores", str(cores), target, env=env)
        record["single_cell"] = {"seconds": seconds, "target": target, "jobs": job_counts(output).get("total")}
        rows.append(["one benchmark of one checkpoint", seconds, record["single_cell"]["jobs"], 1])
    return record, rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="run the tiny DAG end to end and regenerate one cell")
    parser.add_argument("--before", metavar="REF", help="measure commit REF the same way first (before/after)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args(argv)
    record: dict = {"command": "python -m benchmarks dag " + " ".join(argv)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as scratch:
        tmp = args.work or scratch
        versions = ([("before", args.before)] if args.before else []) + [("after" if args.before else "now", None)]
        for name, ref in versions:
            workdir = checkout(ref, Path(tmp) / name)
            env = {"PYTHONPATH": str(workdir)} if ref else {}
            record[name], part = measure(workdir, tiny=args.tiny, cores=args.cores, env=env)
            record[name]["ref"] = ref or "working tree"
            rows += [[f"{name}: {what}", *rest] for what, *rest in part]
    record["load_average"] = os.getloadavg()  # other work on the machine stretches every wall time above
    print_table(["what", "seconds", "jobs", "evaluation jobs"], rows)
    print(write_record("dag", record))
    return 0
