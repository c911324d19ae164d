"""Training memory at the real vocabulary: full logits vs conspo.forward, padding, the planner against measurement.

Peak memory and time of the policy's log-prob + entropy + backward stage, full logits vs conspo.forward; computed
positions per real token of the micro-batching; the memory planner's terms against measured peaks.

Stage measured: one micro-batch of `rows x tokens` response tokens after a short prompt, through a Qwen2 with
Qwen's vocabulary (151,936) and a small body: per-token log-probs with gradient, entropies without, and the backward
of a weighted sum of the log-probs into every parameter. Two paths:
- full logits (the trainer before conspo.forward: `full_logits_logprobs`): left-padded prompts with an attention
  mask, float32 logits of every response position over the whole vocabulary, log-softmax for the log-probs and
  again for the entropies;
- conspo.forward.PolicyForward: rows packed without a mask, the head applied to the response tokens in chunks of
  `--chunk` tokens, each chunk's logits recomputed in backward.
Peak memory is the process's high-water mark (VmHWM) after a reset (/proc/self/clear_refs) less the resident size
just before the stage, each measurement in a fresh process after one warm-up call (CPU; float32 unless --dtype).
The full-logits path needs ~3 MB per token at this vocabulary, so it is measured up to 1,024 tokens and its
per-token slope, fitted by least squares, extrapolated to 8,192; the chunked path is measured up to 8,192.

The padding part: computed positions (rows x their micro-batch's widest row, summed) per real token for a rank's
step batch drawn from an R1-like length distribution (responses lognormal with median 3,500 tokens, 10% cut at
8,192; prompts as stated in the record), whole-batch padding vs token-budget micro-batches.

The planner part: conspo.memory's estimate of the same stage (activations, head chunk, gradients) against the
measured peak at bfloat16 on a scaled body (--body), with and without activation checkpointing.

    python -m benchmarks memory [--tokens-full 256 512 1024] [--tokens-new 256 ... 8192] [--chunk 512]
                                [--planner] [--records DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RECORDS, median_ms, print_table, time_interleaved, write_record
from conspo.batch import RolloutBatch


def full_logits_logprobs(model, mb: RolloutBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs [n, T] (with gradient) and entropies [n, T] (without) as the trainer computed them before
    conspo.forward: left-padded prompts with an attention mask, logits of every response position over the whole
    vocabulary in float32 (float64 for a float64 model), one log-softmax for the log-probs and one for the entropies."""
    ids = torch.cat([mb.prompt_ids, mb.response_ids], dim=1)
    mask = torch.cat([mb.prompt_mask, mb.response_mask], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    t = mb.response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t + 1, use_cache=False)
    logits = out.logits[:, :-1].to(torch.promote_types(out.logits.dtype, torch.float32))
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logprobs = torch.log_softmax(logits, -1).gather(-1, mb.response_ids[..., None]).squeeze(-1)
    with torch.no_grad():
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy


# ------------------------------------------------------------------------------------------------ measurement

VOCAB = 151_936  # Qwen2/Qwen2.5/R1-Distill-Qwen's vocabulary
PROMPT = 16  # prompt tokens before each row's response
VOCAB_BODY = {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 2, "kv_heads": 1}  # float32
PLANNER_BODY = {"hidden": 256, "intermediate": 1408, "layers": 2, "heads": 4, "kv_heads": 2}  # bfloat16
PHASES = ("forward", "head forward", "head backward", "layer backward", "end of backward")
GOAL_MEMORY, GOAL_TIME, GOAL_POSITIONS, GOAL_PLANNER = 20.0, 1.1, 1.10, 0.15


def _memory_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the high-water mark drops to the current resident size


def stage_model(body: dict, dtype: torch.dtype, checkpointing: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=body["hidden"], intermediate_size=body["intermediate"],
                         num_hidden_layers=body["layers"], num_attention_heads=body["heads"],
                         num_key_value_heads=body["kv_heads"], tie_word_embeddings=False,
                         max_position_embeddings=16384)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def stage_batch(rows: int, tokens: int) -> RolloutBatch:
    gen = torch.Generator().manual_seed(1)
    return RolloutBatch.create(
        prompt_ids=torch.randint(0, VOCAB, (rows, PROMPT), generator=gen),
        response_ids=torch.randint(0, VOCAB, (rows, tokens), generator=gen),
        response_mask=torch.ones(rows, tokens, dtype=torch.bool), old_logprobs=torch.zeros(rows, tokens),
        rewards=torch.zeros(rows), group_ids=torch.zeros(rows, dtype=torch.long))


def stage_call(model, batch: RolloutBatch, path: str, chunk: int):
    """One log-prob + entropy + backward stage: the backward of a weighted sum of the log-probs (the weights stand
    for the objective's per-token coefficients) into every parameter."""
    from conspo.forward import PolicyForward, output_head

    forward = PolicyForward(model, output_head(model), max_tokens=10**9, chunk_tokens=chunk)
    weights = torch.rand(batch.response_ids.shape, generator=torch.Generator().manual_seed(2))

    def call():
        model.zero_grad(set_to_none=True)
        lp, _ = full_logits_logprobs(model, batch) if path == "full" else forward.logprobs(batch)
        (lp * weights).sum().backward()

    return call


def phase_hooks(model, before: float, peaks: dict) -> list:
    """Hooks that record the high-water mark of each phase of the stage (above `before`) into `peaks`."""
    def close(name):
        def hook(*_):
            peaks[name] = max(peaks.get(name, 0.0), _memory_mib("VmHWM") - before)
            _reset_peak()
        return hook

    layers = model.model.layers
    return [model.lm_head.register_forward_pre_hook(close("forward")),
            model.lm_head.register_forward_hook(close("head forward")),
            layers[-1].register_full_backward_pre_hook(close("head backward")),
            layers[0].register_full_backward_hook(close("layer backward"))]


def measure_child(spec: dict) -> dict:
    """In this process: the stage's peak above the resident size just before it (after one warm-up call), overall
    and per phase, and the median wall time of `repeats` further calls."""
    import warnings

    warnings.filterwarnings("ignore", message="Full backward hook")
    torch.set_num_threads(spec["threads"])
    model = stage_model(spec["body"], getattr(torch, spec["dtype"]), spec["checkpointing"])
    call = stage_call(model, stage_batch(spec["rows"], spec["tokens"]), spec["path"], spec["chunk"])
    call()
    model.zero_grad(set_to_none=True)
    _reset_peak()
    before = _memory_mib("VmRSS")
    phases: dict[str, float] = {}
    hooks = phase_hooks(model, before, phases)
    call()
    phases["end of backward"] = _memory_mib("VmHWM") - before
    for hook in hooks:
        hook.remove()
    times = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return {**spec, "peak_mib": max(phases.values()), "phases_mib": phases,
            "seconds": statistics.median(times) if times else None}


def measure(**spec) -> dict:
    """`measure_child` in a fresh process; glibc returns every block of 64 KiB or more to the kernel when freed
    (MALLOC_MMAP_THRESHOLD_), so the resident size follows the live tensors."""
    code = ("import json, sys; from benchmarks.bench_memory import measure_child; "
            "print(json.dumps(measure_child(json.loads(sys.argv[1]))))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(spec["threads"])}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


# ------------------------------------------------------------------------------------------------ padding


def positions_per_token(rank_rows: int = 256, group_size: int = 8, budget: int = 36864, trials: int = 20,
                        seed: int = 0) -> dict:
    """Computed positions per real (prompt + response) token of a rank's step batch: responses lognormal with
    median 3,500 and 10% above 8,192 (cut there), prompts lognormal with median 100 tokens and sigma 0.5 (cut at
    1,024), one prompt per group of `group_size`; whole-batch padding (the trainer before conspo.forward) vs the
    token budget. Means over `trials` batches."""
    import numpy as np

    from conspo.forward import computed_positions, token_budget_partition

    rng = np.random.default_rng(seed)
    sigma = math.log(8192 / 3500) / 1.2815515655446004  # the 90% quantile of a standard normal
    whole, packed, padding = [], [], []
    for _ in range(trials):
        prompts = np.minimum(np.round(rng.lognormal(math.log(100), 0.5, rank_rows // group_size)), 1024)
        prompts = prompts.astype(int).repeat(group_size)
        responses = np.clip(np.round(rng.lognormal(math.log(3500), sigma, rank_rows)), 1, 8192).astype(int)
        lengths = (prompts + responses).tolist()
        real = sum(lengths)
        whole.append(rank_rows * (prompts.max() + responses.max()) / real)
        packed.append(computed_positions(lengths, token_budget_partition(lengths, budget)) / real)
        padding.append(1 - responses.sum() / (rank_rows * responses.max()))
    return {"rows_per_rank": rank_rows, "group_size": group_size, "max_tokens_per_micro_batch": budget,
            "trials": trials, "response_lengths": "lognormal, median 3500, P(>8192) = 0.10, cut at 8192",
            "prompt_lengths": "lognormal, median 100, sigma 0.5, cut at 1024, one per group",
            "whole_batch_padding": float(np.mean(whole)), "token_budget": float(np.mean(packed)),
            "response_padding_share_whole_batch": float(np.mean(padding))}


# ------------------------------------------------------------------------------------------------ planner


def planner_estimate(body: dict, tokens: int, checkpointing: bool, chunk: int, act: int) -> dict[str, float]:
    """conspo.memory's per-phase estimate (MiB) of the measured stage on one process (no optimizer)."""
    from conspo.memory import ModelShape, Stage

    shape = ModelShape(layers=body["layers"], hidden=body["hidden"], intermediate=body["intermediate"],
                       heads=body["heads"], kv_heads=body["kv_heads"], head_dim=body["hidden"] // body["heads"],
                       vocab=VOCAB, tied=False, qkv_bias=True)
    grads = shape.params * act
    stage = Stage(tokens=tokens, checkpointing=checkpointing, chunk=chunk, act=act, param=act)
    moments = stage.moments(shape, grads - shape.vocab * shape.hidden * act, grads)
    return {name: value / 2**20 for name, value in moments.items()}


def per_token_slopes(planner: list[dict]) -> list[dict]:
    """Per phase, the bytes per token between the smallest and the largest measured micro-batch, measured and
    estimated (phases whose measured slope is under 1 kB per token hold no per-token term worth comparing)."""
    out = []
    for checkpointing in (False, True):
        points = sorted((r for r in planner if r["checkpointing"] == checkpointing), key=lambda r: r["rows"])
        if len(points) < 2:
            continue
        low, high = points[0], points[-1]
        tokens = (high["rows"] - low["rows"]) * (high["tokens"] + PROMPT)
        for phase in low["ratio"]:
            measured = (high["phases_mib"][phase] - low["phases_mib"][phase]) * 2**20 / tokens
            estimated = (high["estimate_mib"][phase] - low["estimate_mib"][phase]) * 2**20 / tokens
            if measured >= 1000:
                out.append({"checkpointing": checkpointing, "phase": phase, "measured": measured,
                            "estimated": estimated, "ratio": estimated / measured})
    return out


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-full", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tokens-new", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--time-tokens", type=int, default=1024, help="tokens of the timed micro-batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each path (interleaved)")
    parser.add_argument("--chunk", type=int, default=512, help="train.logit_chunk_tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--planner-rows", type=int, nargs="+", default=[2, 4], help="rows of 4,096 tokens")
    parser.add_argument("--no-planner", action="store_true", help="skip the bfloat16 planner check (minutes)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    args = parser.parse_args(argv)
    common = {"rows": 1, "body": VOCAB_BODY, "dtype": "float32", "checkpointing": False, "chunk": args.chunk,
              "repeats": 0, "threads": args.threads}

    # 1. memory of the stage, full logits vs conspo.forward
    full = [measure(path="full", tokens=n, **common) for n in args.tokens_full]
    new = [measure(path="chunked", tokens=n, **common) for n in args.tokens_new]
    slope, intercept = fit_line([r["tokens"] for r in full], [r["peak_mib"] for r in full])
    at = max(args.tokens_new)
    extrapolated = intercept + slope * at
    measured_new = next(r["peak_mib"] for r in new if r["tokens"] == at)
    print_table(["path", "tokens", "peak MiB"], [[r["path"], r["tokens"], r["peak_mib"]] for r in full + new])
    print(f"full logits: {slope:.3f} MiB per token (fit over {args.tokens_full}); at {at} tokens "
          f"{extrapolated:,.0f} MiB extrapolated vs {measured_new:,.0f} MiB measured with conspo.forward: "
          f"{extrapolated / measured_new:.1f}x less (goal >= {GOAL_MEMORY:g}x)")

    # 2. time per token, the two paths taking turns in one process
    torch.set_num_threads(args.threads)
    model = stage_model(VOCAB_BODY, torch.float32, False)
    batch = stage_batch(1, args.time_tokens)
    times = time_interleaved({path: stage_call(model, batch, path, args.chunk) for path in ("full", "chunked")},
                             warmup=1, repeats=args.repeats)
    time_ratio = {kind: median_ms(times["chunked"][kind]) / median_ms(times["full"][kind]) for kind in ("wall", "cpu")}
    print(f"time per token at {args.time_tokens} tokens, conspo.forward / full logits: wall {time_ratio['wall']:.2f}, "
          f"CPU {time_ratio['cpu']:.2f} (goal <= {GOAL_TIME})")
    del model

    # 3. padding
    padding = positions_per_token()
    print(f"computed positions per real token: whole-batch padding {padding['whole_batch_padding']:.2f}, "
          f"token budget {padding['token_budget']:.2f} (goal <= {GOAL_POSITIONS})")

    # 4. the planner's terms against measurement (bfloat16, scaled body, real vocabulary)
    planner = []
    if not args.no_planner:
        for checkpointing in (False, True):
            for rows in args.planner_rows:
                r = measure(path="chunked", rows=rows, tokens=4096, body=PLANNER_BODY, dtype="bfloat16",
                            checkpointing=checkpointing, chunk=args.chunk, repeats=0, threads=args.threads)
                estimate = planner_estimate(PLANNER_BODY, rows * (4096 + PROMPT), checkpointing, args.chunk, 2)
                r["estimate_mib"] = estimate
                r["ratio"] = {p: estimate[p] / r["phases_mib"][p] for p in estimate if r["phases_mib"].get(p)}
                planner.append(r)
        print_table(["checkpointing", "tokens", "phase", "measured MiB", "estimated MiB", "estimate / measured"],
                    [[r["checkpointing"], r["rows"] * (4096 + PROMPT), p, r["phases_mib"][p], r["estimate_mib"][p],
                      r["ratio"][p]] for r in planner for p in r["ratio"]])
        worst = max(abs(ratio - 1) for r in planner for ratio in r["ratio"].values())
        print(f"planner: largest deviation from measurement {worst:.1%} (goal <= {GOAL_PLANNER:.0%})")
        slopes = per_token_slopes(planner)
        print_table(["checkpointing", "phase", "measured B/token", "estimated B/token", "estimate / measured"],
                    [[r["checkpointing"], r["phase"], r["measured"], r["estimated"], r["ratio"]] for r in slopes])

    slopes = per_token_slopes(planner)
    path = write_record("memory", {
        "setup": {"vocabulary": VOCAB, "vocab_body": VOCAB_BODY, "planner_body": PLANNER_BODY, "prompt": PROMPT,
                  "chunk": args.chunk, "threads": args.threads, "device": "cpu",
                  "peak": "VmHWM after /proc/self/clear_refs, minus VmRSS before the stage, fresh process per point, "
                          "MALLOC_MMAP_THRESHOLD_=65536"},
        "full_logits": full, "conspo_forward": new,
        "full_logits_fit": {"mib_per_token": slope, "intercept_mib": intercept, "tokens": args.tokens_full},
        "at_tokens": at, "full_logits_extrapolated_mib": extrapolated, "conspo_forward_mib": measured_new,
        "memory_ratio": extrapolated / measured_new, "goal_memory_ratio": GOAL_MEMORY,
        "time": {"tokens": args.time_tokens, "seconds": times, "ratio_new_over_full": time_ratio},
        "goal_time_ratio": GOAL_TIME,
        "positions_per_real_token": padding, "goal_positions_per_token": GOAL_POSITIONS,
        "planner": planner, "planner_per_token": slopes, "goal_planner_deviation": GOAL_PLANNER,
        "load_average": list(os.getloadavg()),
    }, args.records)
    print(f"record: {path}")
    return 0
