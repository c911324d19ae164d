"""Shared benchmark helpers: interleaved timing with warm-up and repeats, medians, a printed table, and an atomic
JSON record in `benchmarks/records/NAME.json` with the environment it was measured in."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

RECORDS = Path(__file__).parent / "records"


def time_interleaved(
    calls: dict[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 10
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each call, `repeats` times after `warmup` untimed rounds: {"wall": [...], "cpu": [...]} per call.

    The calls take turns within every round, so a slow phase of a shared machine hits every entry alike and the
    ratios between entries stay meaningful. "cpu" is this process's CPU time (all its threads), which other
    processes competing for the cores inflate far less than the wall-clock time.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    times = {name: {"wall": [], "cpu": []} for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_index >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def median_ms(times: list[float]) -> float:
    return 1000.0 * statistics.median(times)


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def environment() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_record(name: str, payload: dict, directory: Path = RECORDS) -> Path:
    """Write `directory/NAME.json` atomically (a temporary file in the same folder, then os.replace)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.json"
    record = {"benchmark": name, "environment": environment(), **payload}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target
