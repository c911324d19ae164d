"""`conspo select`: choose the checkpoints of one run whose evaluations fill the tables.

    conspo select --run NAME --metrics DIR/step-000100/AIME24.metrics.json ... --out selected/NAME.json

The paper reports each method's best evaluation (Sec. 5.1: "evaluations every 100 steps ... the best performance for
each method is reported"). The best checkpoint here is the one with the highest mean over the run's benchmarks (ties:
the earlier step), so every benchmark of a row comes from the same checkpoint. The last checkpoint is recorded
beside it. The output holds, for both, every benchmark's metrics (value, standard errors, k, per-problem counts).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .atomic import write_json_atomic

STEP_DIR = re.compile(r"^step-(\d+)$")
KEPT = ("benchmark", "metric", "value", "k", "n_problems", "se_problems", "se_generation", "per_problem_correct")


def step_of(path: str | Path) -> int:
    """The training step of a metrics file .../step-000100/NAME.metrics.json."""
    match = STEP_DIR.match(Path(path).parent.name)
    if match is None:
        raise ValueError(f"{path}: not inside a step-NNNNNN folder")
    return int(match.group(1))


def read_metrics(path: str | Path) -> dict:
    with open(path) as handle:
        metrics = json.load(handle)
    missing = [key for key in KEPT if key not in metrics]
    if missing:
        raise ValueError(f"{path}: metrics file lacks {', '.join(missing)}")
    return {**{key: metrics[key] for key in KEPT}, "path": str(path)}


def select(run: str, metric_files: list[str]) -> dict:
    """Best (highest mean over benchmarks, earliest on ties) and last checkpoint of a run from its metrics files."""
    by_step: dict[int, dict[str, dict]] = {}
    for path in metric_files:
        metrics = read_metrics(path)
        by_step.setdefault(step_of(path), {})[metrics["benchmark"]] = metrics
    if not by_step:
        raise ValueError(f"run {run}: no metrics files")
    benchmarks = sorted({b for per_step in by_step.values() for b in per_step})
    for step, per_step in by_step.items():
        missing = sorted(set(benchmarks) - set(per_step))
        if missing:
            raise ValueError(f"run {run}: step {step} has no evaluation on {', '.join(missing)}")
    history = [{"step": step, "average": sum(by_step[step][b]["value"] for b in benchmarks) / len(benchmarks),
                "values": {b: by_step[step][b]["value"] for b in benchmarks}} for step in sorted(by_step)]
    best = max(history, key=lambda point: (point["average"], -point["step"]))
    last = history[-1]

    def checkpoint(point: dict) -> dict:
        return {"step": point["step"], "average": point["average"], "benchmarks": by_step[point["step"]]}

    return {"run": run, "benchmarks": benchmarks, "criterion": "highest mean over benchmarks, earliest on ties",
            "history": history, "best": checkpoint(best), "last": checkpoint(last)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run name (recorded)")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics files of every checkpoint x benchmark")
    parser.add_argument("--out", required=True, help="selection JSON")
    args = parser.parse_args(argv[1:])
    selection = select(args.run, args.metrics)
    write_json_atomic(args.out, selection)
    print(f"{args.run}: best step {selection['best']['step']} (mean {selection['best']['average']:.2f}), "
          f"last step {selection['last']['step']} (mean {selection['last']['average']:.2f})")
    return 0
