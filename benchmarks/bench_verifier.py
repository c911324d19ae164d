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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks verifier", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="responses per timed call")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extraction", default="boxed", choices=["boxed", "last"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-answer limit (seconds)")
    args = parser.parse_args(argv)

    responses, golds = realistic_responses(args.n)
    parse_timeout = max(1, int(args.timeout / 2))  # the inner limit the pool's workers use

    def serial() -> list[tuple[bool, str | None, bool]]:
        return [judge(response, gold, args.extraction, parse_timeout) for response, gold in zip(responses, golds)]

    with Verifier(args.extraction, timeout=args.timeout, workers=args.workers, cache_size=0) as pool:
        pool.verify(responses[:args.workers], golds[:args.workers])  # start the workers outside the timing
        pooled = pool.verify(responses, golds)
        inline = serial()
        agreement = sum((v.correct, v.extracted) == s[:2] for v, s in zip(pooled, inline)) / len(inline)
        times = time_interleaved({"serial": serial, "pool": lambda: pool.verify(responses, golds)},
                                 warmup=1, repeats=args.repeats)
        timeouts = pool.timeouts

    serial_ms, pool_ms = median_ms(times["serial"]["wall"]), median_ms(times["pool"]["wall"])
    serial_cpu_ms = median_ms(times["serial"]["cpu"])
    speedup = serial_ms / pool_ms
    rows = [["serial loop", args.n, serial_ms, 1000.0 * args.n / serial_ms, 1.0],
            [f"pool ({args.workers} workers)", args.n, pool_ms, 1000.0 * args.n / pool_ms, speedup]]
    print_table(["mode", "responses", "median wall ms", "responses/s", "speedup"], rows)
    # the serial loop's CPU time is the work itself, barely inflated by other processes: an upper bound on what
    # `workers` cores could reach on an idle machine is serial_cpu / workers
    ideal_ms = serial_cpu_ms / args.workers
    print(f"serial CPU time {serial_cpu_ms:.0f} ms ({serial_cpu_ms / args.n:.1f} ms per response); "
          f"pool wall / ideal {pool_ms / ideal_ms:.2f}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"verdict agreement {agreement:.3f}; share correct {sum(v.correct for v in pooled) / len(pooled):.3f}; "
          f"time-outs {timeouts}; goal >= {GOAL_SPEEDUP}x: {'met' if speedup >= GOAL_SPEEDUP else 'not met'}")
    path = write_record("verifier", {
        "command": "python -m benchmarks verifier " + " ".join(argv),
        "n_responses": args.n, "workers": args.workers, "extraction": args.extraction, "repeats": args.repeats,
        "usable_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
        "serial_wall_s": times["serial"]["wall"], "serial_cpu_s": times["serial"]["cpu"],
        "pool_wall_s": times["pool"]["wall"],
        "median_serial_ms": serial_ms, "median_serial_cpu_ms": serial_cpu_ms, "median_pool_ms": pool_ms,
        "speedup": speedup, "goal_speedup": GOAL_SPEEDUP, "goal_met": speedup >= GOAL_SPEEDUP,
        "verdict_agreement": agreement, "timeouts": timeouts,
    })
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
