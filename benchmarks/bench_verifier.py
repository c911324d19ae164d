"""Verification throughput: the worker pool of conspo.verifier vs a serial in-process loop on the same responses.

`python -m benchmarks verifier [--n 300] [--workers 2] [--extraction boxed] [--repeats 5]` prints a table and writes
benchmarks/records/verifier.json. The pool runs with its cache off, so every repeat re-checks every response.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_ms, print_table, time_interleaved, write_record
from conspo.verifier import Verifier, judge

GOAL_SPEEDUP = 1.8  # issue 4: pool vs serial on 2 cores
WARMUP_ROUNDS = 1


def _gold_and_answers(rng: random.Random) -> tuple[str, str, str]:
    """A gold in one of MATH's common answer shapes, an equal answer written differently, and a wrong one."""
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 9)
    shape = rng.randrange(7)
    if shape == 0:
        return str(a * b), str(a * b), str(a * b + c)
    if shape == 1:
        return f"\\frac{{{a}}}{{{a + b}}}", f"\\dfrac{{{2 * a}}}{{{2 * (a + b)}}}", f"\\frac{{{a + b}}}{{{a}}}"
    if shape == 2:
        return f"{c}\\sqrt{{{b}}}", f"\\sqrt{{{c * c * b}}}", f"{c + 1}\\sqrt{{{b}}}"
    if shape == 3:
        return f"({a}, {-b})", f"\\left({a},-{b}\\right)", f"({-b}, {a})"
    if shape == 4:
        return f"[{-a}, {b})", f"[-{a},{b})", f"({-a}, {b}]"
    if shape == 5:
        return f"\\frac{{{c}\\pi}}{{{a}}}", f"\\frac{{{c}}}{{{a}}}\\pi", f"\\frac{{{a}\\pi}}{{{c + a}}}"
    return f"{a}x^2+{b}x+{c}", f"{c}+{b}x+{a}x^2", f"{a}x^2+{b}x-{c}"


def realistic_responses(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` distinct chain-of-thought-like responses ending in a boxed answer (two thirds correct), and golds."""
    rng = random.Random(seed)
    responses, golds = [], []
    for index in range(n):
        gold, equal, wrong = _gold_and_answers(rng)
        steps = " ".join(f"Step {step}: we have ${rng.randint(1, 99)} + {rng.randint(1, 99)}$ so far."
                         for step in range(1, rng.randint(3, 8)))
        answer = equal if index % 3 else wrong
        responses.append(f"Let me think about problem {index}. {steps} Therefore the final answer is "
                         f"$\\boxed{{{answer}}}$.")
        golds.append(gold)
    return responses, golds


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of running processes, from /proc (the pool's workers are not our children)."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks verifier", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="responses per timed call")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extraction", default="boxed", choices=["boxed", "last"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-answer limit (seconds)")
    args = parser.parse_args(argv)

    responses, golds = realistic_responses(args.n)
    def serial() -> list[tuple[bool, str | None, bool]]:
        return [judge(response, gold, args.extraction, args.timeout) for response, gold in zip(responses, golds)]

    with Verifier(args.extraction, timeout=args.timeout, workers=args.workers, cache_bytes=0) as pool:
        pool.verify(responses[:args.workers], golds[:args.workers])  # start the workers outside the timing
        pooled_verdicts = pool.verify(responses, golds)
        inline = serial()
        agreement = sum((v.correct, v.extracted) == s[:2] for v, s in zip(pooled_verdicts, inline)) / len(inline)
        worker_cpu: list[float] = []

        def pooled() -> None:
            before = cpu_seconds(pool.worker_pids)
            pool.verify(responses, golds)
            worker_cpu.append(cpu_seconds(pool.worker_pids) - before)

        times = time_interleaved({"serial": serial, "pool": pooled}, warmup=WARMUP_ROUNDS, repeats=args.repeats)
        timeouts = pool.timeouts

    serial_ms, pool_ms = median_ms(times["serial"]["wall"]), median_ms(times["pool"]["wall"])
    serial_cpu_ms = median_ms(times["serial"]["cpu"])
    worker_cpu = worker_cpu[WARMUP_ROUNDS:]
    pool_cpu_ms = median_ms([workers + parent for workers, parent in zip(worker_cpu, times["pool"]["cpu"])])
    speedup = serial_ms / pool_ms
    # With other sessions busy, the kernel's per-session CPU share (autogroup) caps this benchmark's processes
    # together, so the wall speedup can only appear on idle cores. The CPU-time ratio is what the pool can reach
    # there: `workers` times the serial CPU over the pool's total CPU (workers + dispatching process).
    projected = args.workers * serial_cpu_ms / pool_cpu_ms
    rows = [["serial loop", args.n, serial_ms, serial_cpu_ms, 1000.0 * args.n / serial_ms, 1.0],
            [f"pool ({args.workers} workers)", args.n, pool_ms, pool_cpu_ms, 1000.0 * args.n / pool_ms, speedup]]
    print_table(["mode", "responses", "median wall ms", "median CPU ms", "responses/s", "wall speedup"], rows)
    print(f"projected speedup on {args.workers} idle cores (CPU-time ratio): {projected:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"verdict agreement {agreement:.3f}; share correct {sum(v.correct for v in pooled_verdicts) / args.n:.3f}; "
          f"time-outs {timeouts}; goal >= {GOAL_SPEEDUP}x (wall): {'met' if speedup >= GOAL_SPEEDUP else 'not met'}")
    path = write_record("verifier", {
        "command": "python -m benchmarks verifier " + " ".join(argv),
        "n_responses": args.n, "workers": args.workers, "extraction": args.extraction, "repeats": args.repeats,
        "usable_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
        "serial_wall_s": times["serial"]["wall"], "serial_cpu_s": times["serial"]["cpu"],
        "pool_wall_s": times["pool"]["wall"], "pool_worker_cpu_s": worker_cpu,
        "pool_parent_cpu_s": times["pool"]["cpu"],
        "median_serial_ms": serial_ms, "median_serial_cpu_ms": serial_cpu_ms, "median_pool_ms": pool_ms,
        "median_pool_cpu_ms": pool_cpu_ms, "speedup": speedup, "projected_idle_speedup": projected,
        "goal_speedup": GOAL_SPEEDUP, "goal_met": speedup >= GOAL_SPEEDUP,
        "verdict_agreement": agreement, "timeouts": timeouts,
    })
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
