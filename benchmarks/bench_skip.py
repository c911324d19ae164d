"""The update stage of a training step with half its groups degenerate, with and without skipping the rows that add
nothing to the gradient (`train.skip_zero_rows`): milliseconds per update, and the gradients' largest difference.

A rank's step batch as the trainer holds it after its rollouts (`python -m benchmarks trainer` times whole steps; a
skipped row saves only update time, generation is unchanged): 8 groups of 8 rollouts, the first 4 groups mixed
(correct and incorrect), the other 4 all correct or all wrong; prompts of 16 tokens, responses lognormal (median 96
tokens, cut at 256: the paper's R1-like shape scaled to CPU). The policy is a Qwen2 with the real 151,936-token
vocabulary and a small body (hidden 64, 2 layers), float32, through the trainer's PolicyForward (token-budget
micro-batches of 2,048 positions, chunked head). On-policy, as the first update of a step: GRPO (linear) takes
its old log-probs from the gradient pass, ConSPO and DisCO take their coefficients from terms at the old log-probs
(the trainer's separate no-grad pass, before the update, not timed). The variants take turns in every round
(common.time_interleaved).

    python -m benchmarks skip [--groups 8] [--degenerate 4] [--repeats 3] [--records DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_memory import VOCAB
from benchmarks.common import RECORDS, median_ms, print_table, time_interleaved, write_record

GROUP, PROMPT, MEDIAN, CUT, BUDGET = 8, 16, 96, 256, 2048
BODY = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 2, "kv_heads": 1}
METHODS = ("grpo", "conspo", "disco")


def policy():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=BODY["hidden"], intermediate_size=BODY["intermediate"],
                         num_hidden_layers=BODY["layers"], num_attention_heads=BODY["heads"],
                         num_key_value_heads=BODY["kv_heads"], tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).train()


def step_batch(groups: int, degenerate: int):
    """Rollouts of `groups` groups; the last `degenerate` ones all correct (even) or all wrong (odd)."""
    from conspo import RolloutBatch

    rng = np.random.default_rng(0)
    rows = groups * GROUP
    lengths = np.clip(np.round(rng.lognormal(math.log(MEDIAN), 0.6, rows)), 1, CUT).astype(int)
    correct = rng.random(rows) < 0.5
    for g in range(groups):
        block = slice(g * GROUP, (g + 1) * GROUP)
        if g >= groups - degenerate:
            correct[block] = (g % 2 == 0)
        else:
            correct[g * GROUP], correct[g * GROUP + 1] = True, False  # mixed for sure
    gen = torch.Generator().manual_seed(1)
    return RolloutBatch.create(
        prompt_ids=torch.randint(0, VOCAB, (rows, PROMPT), generator=gen),
        response_ids=torch.randint(0, VOCAB, (rows, int(lengths.max())), generator=gen),
        response_mask=torch.arange(int(lengths.max()))[None] < torch.tensor(lengths)[:, None],
        old_logprobs=torch.zeros(rows, int(lengths.max())),
        rewards=torch.tensor(correct, dtype=torch.float64), correct=torch.tensor(correct),
        group_ids=torch.arange(groups).repeat_interleave(GROUP))


def update(model, forward, objective, batch, skip: bool) -> dict:
    """One on-policy update as `conspo.train.optimizer_steps` runs it (without the optimizer step)."""
    from conspo.objective import accumulate_gradients

    model.zero_grad(set_to_none=True)
    passes = forward.gradient_passes(old_from_pass=objective.linear, on_policy=True)
    terms = None if objective.linear else objective.sequence_terms(batch, batch.old_logprobs)
    _, metrics = accumulate_gradients(objective, batch, passes, progress=0.0, terms=terms, skip_zero_rows=skip)
    return {"skipped": metrics["skipped_rows"], "grads": [p.grad.clone() for p in model.parameters()]}


def main(argv: list[str]) -> int:
    from conspo.forward import PolicyForward, output_head
    from conspo.objective import build_objective

    parser = argparse.ArgumentParser(prog="python -m benchmarks skip", description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--degenerate", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=Path, default=RECORDS)
    args = parser.parse_args(argv)

    model = policy()
    forward = PolicyForward(model, output_head(model), max_tokens=BUDGET, chunk_tokens=512)
    batch = step_batch(args.groups, args.degenerate)
    batch.old_logprobs, _ = forward.token_logprobs(batch)  # the behaviour policy is the current one
    rows, measured = [], {}
    for name in METHODS:
        objective = build_objective(name)
        prepared = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))
        last = {}

        def call(skip):
            def run():
                last[skip] = update(model, forward, objective, prepared, skip)
            return run

        times = time_interleaved({"skip": call(True), "all rows": call(False)}, warmup=1, repeats=args.repeats)
        difference = max(float((a - b).abs().max()) for a, b in zip(last[True]["grads"], last[False]["grads"]))
        scale = max(float(b.abs().max()) for b in last[False]["grads"])
        ratio = median_ms(times["skip"]["wall"]) / median_ms(times["all rows"]["wall"])
        measured[name] = {"ms_all_rows": median_ms(times["all rows"]["wall"]),
                          "ms_skip": median_ms(times["skip"]["wall"]), "ratio": ratio,
                          "skipped_rows": last[True]["skipped"],
                          "max_grad_difference": difference, "max_grad": scale}
        rows.append([name, measured[name]["ms_all_rows"], measured[name]["ms_skip"], ratio, last[True]["skipped"],
                     f"{difference:.1e} of {scale:.1e}"])
    print_table(["method", "ms/update all rows", "ms/update skipping", "ratio", "rows skipped",
                 "max |grad difference|"], rows)
    tokens = int(batch.prompt_mask.sum() + batch.response_mask.sum())
    path = write_record("skip", {
        "config": {"groups": args.groups, "degenerate_groups": args.degenerate, "group_size": GROUP,
                   "rows": len(batch), "tokens": tokens, "vocabulary": VOCAB, "body": BODY,
                   "response_lengths": f"lognormal median {MEDIAN}, sigma 0.6, cut at {CUT}", "prompt_tokens": PROMPT,
                   "max_tokens_per_micro_batch": BUDGET, "repeats": args.repeats, "dtype": "float32"},
        "methods": measured, "load_average": list(os.getloadavg())}, args.records)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
