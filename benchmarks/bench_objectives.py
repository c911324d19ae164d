"""Forward+backward cost of every registered objective relative to GRPO on the same rollout batch.

What is timed is the objective's part of a training step, not the model: the response log-probs are one leaf
tensor [N, T] requiring grad, `logprob_fn` slices it per micro-batch, and `accumulate_gradients` runs the
objective's terms, the whole-batch loss and the backward into the leaf. Non-linear objectives (ConSPO and its
ablations, DisCO, GMPO) get their no-grad terms from the behaviour log-probs, as the trainer does on the first,
strictly on-policy update; the "+ no-grad pass" rows time the variant that recomputes them (with a real model that
extra pass is a full forward, so those rows understate it). Objectives with a `prepare` step that needs a policy
(CLIPO, CEPO) are timed end to end by `python -m benchmarks methods` instead.

    python -m benchmarks objectives [--rollouts 256] [--tokens 1024] [--group-size 8] [--micro-batch-size 64]
                                    [--repeats 15] [--warmup 2] [--methods grpo conspo ...] [--records DIR]
                                    [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import RECORDS, median_ms, print_table, time_interleaved, write_record
from conspo import RolloutBatch, accumulate_gradients, available_objectives, build_objective
from conspo.objective import Objective, RowChunks

ISSUE_2_GOAL = 1.1  # ConSPO / GRPO forward+backward cost


def rollout_batch(rollouts: int, tokens: int, group_size: int, seed: int = 0) -> RolloutBatch:
    """Binary rewards, lengths spread over [tokens/4, tokens], log-probs of a plausible policy; row ids in extras."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(tokens // 4, tokens + 1, (rollouts,), generator=gen)
    return RolloutBatch.create(
        response_ids=torch.randint(0, 32000, (rollouts, tokens), generator=gen),
        response_mask=torch.arange(tokens)[None] < lengths[:, None],
        old_logprobs=-2.0 * torch.rand(rollouts, tokens, generator=gen),
        rewards=torch.randint(0, 2, (rollouts,), generator=gen).float(),
        group_ids=torch.arange(rollouts) // group_size,
        extras={"row": torch.arange(rollouts)},
    )


def needs_policy(objective: Objective) -> bool:
    return type(objective).prepare is not Objective.prepare


def timed_step(objective: Objective, batch: RolloutBatch, micro_batch_size: int, on_policy_terms: bool):
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
    logprobs = batch.old_logprobs.clone().requires_grad_(True)  # the current policy = the behaviour policy

    def logprob_fn(micro_batch: RolloutBatch) -> torch.Tensor:
        return logprobs[micro_batch.extras["row"]]

    def step():
        logprobs.grad = None
        terms = None
        if on_policy_terms and not objective.linear:
            with torch.no_grad():
                terms = objective.sequence_terms(batch, batch.old_logprobs)
        accumulate_gradients(objective, batch, RowChunks(logprob_fn, micro_batch_size), progress=0.5, terms=terms)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks objectives", description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="*", help="registered names (default: all)")
    parser.add_argument("--records", type=Path, default=RECORDS, help="folder of the JSON record")
    # One intra-op thread by default: this is elementwise, memory-bound work, and on a shared CPU the idle-spinning
    # of a second OpenMP thread swung 2-thread medians by 10x between runs; 0 keeps torch's own choice.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's choice)")
    args = parser.parse_args(argv)
    previous_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(previous_threads)  # callers in the same process (tests) keep their setting


def run(args: argparse.Namespace) -> int:
    names = args.methods or available_objectives()
    if "grpo" not in names:
        names = ["grpo", *names]
    batch = rollout_batch(args.rollouts, args.tokens, args.group_size)
    calls, skipped = {}, {}
    for name in names:
        objective = build_objective(name)
        if needs_policy(objective):
            skipped[name] = "prepare() needs a policy model: see `python -m benchmarks methods`"
            continue
        calls[name] = timed_step(objective, batch, args.micro_batch_size, on_policy_terms=True)
        if not objective.linear:
            calls[f"{name} + no-grad pass"] = timed_step(objective, batch, args.micro_batch_size, on_policy_terms=False)
    times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)

    base_wall, base_cpu = median_ms(times["grpo"]["wall"]), median_ms(times["grpo"]["cpu"])
    results = {
        name: {"median_ms": median_ms(t["wall"]), "ratio_to_grpo": median_ms(t["wall"]) / base_wall,
               "median_cpu_ms": median_ms(t["cpu"]), "cpu_ratio_to_grpo": median_ms(t["cpu"]) / base_cpu,
               "times_s": t["wall"], "cpu_times_s": t["cpu"]}
        for name, t in times.items()
    }
    print(f"objective forward+backward, {args.rollouts} rollouts x {args.tokens} tokens, groups of {args.group_size}, "
          f"micro-batches of {args.micro_batch_size}, {torch.get_num_threads()} threads, median of {args.repeats}")
    # CPU time beside wall time: on a shared machine it is the less load-dependent of the two
    print_table(["objective", "median ms", "ratio to GRPO", "median CPU ms", "CPU ratio"],
                [[name, r["median_ms"], r["ratio_to_grpo"], r["median_cpu_ms"], r["cpu_ratio_to_grpo"]]
                 for name, r in results.items()])
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    verdict = {}
    if "conspo" in results:
        ratio = results["conspo"]["ratio_to_grpo"]
        cpu_ratio = results["conspo"]["cpu_ratio_to_grpo"]
        verdict = {"conspo_over_grpo": ratio, "conspo_over_grpo_cpu": cpu_ratio, "goal": ISSUE_2_GOAL,
                   "met": ratio <= ISSUE_2_GOAL and cpu_ratio <= ISSUE_2_GOAL}
        print(f"ConSPO / GRPO = {ratio:.3f} wall, {cpu_ratio:.3f} CPU "
              f"(issue 2 goal <= {ISSUE_2_GOAL}: {'met' if verdict['met'] else 'NOT met'})")
    path = write_record("objectives", directory=args.records, payload={
        "setup": {"rollouts": args.rollouts, "tokens": args.tokens, "group_size": args.group_size,
                  "micro_batch_size": args.micro_batch_size, "repeats": args.repeats, "warmup": args.warmup},
        "results": results,
        "skipped": skipped,
        "issue_2": verdict,
    })
    print(f"wrote {path}")
    return 0
