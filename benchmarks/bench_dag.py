"""Workflow timings: dry run of the paper's grid (slurm profile), the whole tiny DAG, one regenerated cell.

    python -m benchmarks dag            # dry run of config/paper.yaml only
    python -m benchmarks dag --tiny     # also run the embedded default end to end and regenerate one cell

Everything runs in a temporary copy of the workflow; the record is benchmarks/records/dag.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import print_table, write_record

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "slurm", "profiles")
# one benchmark of one checkpoint: the ConSPO run of Table 1 (tiny), last checkpoint, AIME24
TINY_CELL = "results/evals/tiny-a--deepscaler-preview--conspo/step-000004/AIME24.metrics.json"


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="run the tiny DAG end to end and regenerate one cell")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    record: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        paper = copy_workflow(Path(tmp) / "paper")
        seconds, output = timed_snakemake(paper, "--profile", "slurm", "--dry-run", "--quiet", "rules", "--",
                                          "tables")
        counts = job_counts(output)
        record["paper_dry_run"] = {"seconds": seconds, "jobs": counts.get("total"), "train": counts.get("train"),
                                   "evaluate_checkpoint": counts.get("evaluate_checkpoint"),
                                   "evaluate_base_model": counts.get("evaluate_base_model")}
        rows = [["paper grid dry run (slurm profile)", seconds, counts.get("total")]]
        if args.tiny:
            tiny = copy_workflow(Path(tmp) / "tiny")
            seconds, output = timed_snakemake(tiny, "--cores", str(args.cores), "all")
            record["tiny_full"] = {"seconds": seconds, "jobs": job_counts(output).get("total"), "cores": args.cores}
            rows.append(["tiny DAG end to end", seconds, record["tiny_full"]["jobs"]])
            (tiny / TINY_CELL).unlink()
            seconds, output = timed_snakemake(tiny, "--cores", str(args.cores), TINY_CELL)
            record["single_cell"] = {"seconds": seconds, "target": TINY_CELL,
                                     "jobs": job_counts(output).get("total")}
            rows.append(["one benchmark of one checkpoint", seconds, record["single_cell"]["jobs"]])
    record["load_average"] = os.getloadavg()  # other work on the machine stretches every wall time above
    print_table(["what", "seconds", "jobs"], rows)
    print(write_record("dag", record))
    return 0
