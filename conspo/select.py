"""`conspo select`: choose the checkpoints of one run whose evaluations fill the tables.

    conspo select --run NAME --metrics DIR/step-000100/AIME24.metrics.json ... [--validation NAME] \
        --out selected/NAME.json
    conspo check-validation --train data/train/D.jsonl --validation data/benchmarks/V.jsonl --out data/validation/D.json

The paper reports each method's best evaluation (Sec. 5.1: "evaluations every 100 steps ... the best performance for
each method is reported"). The best checkpoint here is the one with the highest mean over the run's benchmarks (ties:
the earlier step), so every benchmark of a row comes from the same checkpoint. Choosing on the benchmarks that are
then reported inflates the cell (the maximum of noisy evaluations); so the last checkpoint is recorded beside it,
and with `--validation NAME` (config `selection.validation`) also the checkpoint with the highest score on that
validation benchmark, which is not one of the reported columns ("validated"; the validation benchmark is left out
of the best checkpoint's mean). `check-validation` refuses a validation set that shares a problem with the training
prompts. The output holds, for every choice, every benchmark's metrics (value, standard errors, k, per-problem
counts).
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


def select(run: str, metric_files: list[str], validation: str | None = None) -> dict:
    """Best (highest mean over benchmarks, earliest on ties), last and (with `validation`) the best checkpoint on the
    validation benchmark of a run, from its metrics files."""
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
    if validation is not None and validation not in benchmarks:
        raise ValueError(f"run {run}: no evaluation on the validation benchmark {validation!r}")
    reported = [b for b in benchmarks if b != validation]
    if not reported:
        raise ValueError(f"run {run}: no benchmark besides the validation benchmark {validation!r}")
    history = [{"step": step, "average": sum(by_step[step][b]["value"] for b in reported) / len(reported),
                "values": {b: by_step[step][b]["value"] for b in benchmarks}} for step in sorted(by_step)]

    def checkpoint(point: dict) -> dict:
        return {"step": point["step"], "average": point["average"], "benchmarks": by_step[point["step"]]}

    chosen = {"best": max(history, key=lambda point: (point["average"], -point["step"])), "last": history[-1]}
    if validation is not None:
        chosen["validated"] = max(history, key=lambda point: (point["values"][validation], -point["step"]))
    return {"run": run, "benchmarks": benchmarks, "validation": validation,
            "criterion": "highest mean over benchmarks, earliest on ties",
            "history": history, **{choice: checkpoint(point) for choice, point in chosen.items()}}


def normalised_problem(text: str) -> str:
    return " ".join(text.lower().split())


def check_validation(train: str, validation: str) -> dict:
    """Refuse (ValueError naming both files and the first shared problem) a validation set that shares a problem
    with the training prompts; otherwise return the counts."""
    from .data import read_jsonl

    prompts = {normalised_problem(record["problem"]) for record in read_jsonl(train)}
    records = read_jsonl(validation)
    shared = [record["id"] for record in records if normalised_problem(record["problem"]) in prompts]
    if shared:
        raise ValueError(f"{validation}: {len(shared)} of its {len(records)} problems are training prompts of "
                         f"{train} (first: {shared[0]}); a validation set must be disjoint from the training data")
    return {"train": train, "validation": validation, "training_prompts": len(prompts),
            "validation_problems": len(records), "shared": 0}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"conspo {argv[0]}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv[0] == "check-validation":
        parser.add_argument("--train", required=True, help="the training set (JSONL records)")
        parser.add_argument("--validation", required=True, help="the validation benchmark (JSONL records)")
        parser.add_argument("--out", required=True, help="record of the check (JSON)")
        args = parser.parse_args(argv[1:])
        write_json_atomic(args.out, check_validation(args.train, args.validation))
        print(f"{args.validation}: no problem shared with {args.train}")
        return 0
    parser.add_argument("--run", required=True, help="run name (recorded)")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics files of every checkpoint x benchmark")
    parser.add_argument("--validation", default=None, help="benchmark that selects the 'validated' checkpoint")
    parser.add_argument("--out", required=True, help="selection JSON")
    args = parser.parse_args(argv[1:])
    selection = select(args.run, args.metrics, args.validation)
    write_json_atomic(args.out, selection)
    print(f"{args.run}: " + ", ".join(f"{choice} step {selection[choice]['step']} "
                                      f"(mean {selection[choice]['average']:.2f})"
                                      for choice in ("best", "last", "validated") if choice in selection))
    return 0
