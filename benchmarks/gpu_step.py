"""A prepared GPU check of the trainer's memory (at most 8 minutes on one GPU): one training step of the harness's
own code on a randomly initialised model of DeepSeek-R1-Distill-Qwen-1.5B's exact shape (config/model_shapes.yaml:
no download), with synthetic rollouts of fixed lengths, printing the measured peak memory and tokens/s beside the
memory planner's estimate (conspo.memory). Needs torch, transformers and accelerate (no vLLM).

The step is stages 4 and 6 of conspo.train: the no-grad old-log-prob pass (with entropies) over the batch, then
`optimizer_steps` (ConSPO's exact group gradients through conspo.forward's token-budget micro-batches and chunked
head, AdamW), with the trainer's own `policy_passes` on an `Accelerator`. The model is bfloat16 with HF activation
checkpointing (one process: no FSDP). A first step allocates AdamW's moments; the second is measured.

    python benchmarks/gpu_step.py                       # on a GPU: 1.5B shape, 8 rows x (1,024 + 8,192) tokens
    python benchmarks/gpu_step.py --tiny                # anywhere: a tiny shape on CPU, to check that it runs
    [--rows 8] [--prompt 1024] [--response 8192] [--max-tokens 36864] [--chunk 512] [--json PATH]

Its figures go into docs/training.md ("Memory") once it has run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

MODEL_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False,
        "max_position_embeddings": 4096}


def model_config(tiny: bool):
    from transformers import AutoConfig

    entry = dict(TINY if tiny else yaml.safe_load((ROOT / "config" / "model_shapes.yaml").read_text())[MODEL_ID])
    return AutoConfig.for_model(entry.pop("model_type"), **entry)


def synthetic_batch(rows: int, prompt: int, response: int, vocab: int, device):
    """One group of `rows` rollouts of fixed lengths, half of them correct."""
    from conspo.batch import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    rewards = (torch.arange(rows) % 2).float()
    return RolloutBatch.create(
        prompt_ids=torch.randint(1, vocab, (rows, prompt), generator=gen).to(device),
        response_ids=torch.randint(1, vocab, (rows, response), generator=gen).to(device),
        response_mask=torch.ones(rows, response, dtype=torch.bool, device=device),
        old_logprobs=torch.zeros(rows, response, device=device), rewards=rewards.to(device),
        group_ids=torch.zeros(rows, dtype=torch.long, device=device))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short rows, on CPU")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens per row [1024; tiny: 16]")
    parser.add_argument("--response", type=int, default=None, help="response tokens per row [8192; tiny: 48]")
    parser.add_argument("--max-tokens", type=int, default=None, help="train.max_tokens_per_micro_batch [36864]")
    parser.add_argument("--chunk", type=int, default=512, help="train.logit_chunk_tokens")
    parser.add_argument("--method", default="conspo")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    prompt = args.prompt or (16 if args.tiny else 1024)
    response = args.response or (48 if args.tiny else 8192)
    max_tokens = args.max_tokens or (4 * (prompt + response) if args.tiny else 36864)

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from conspo.forward import ForwardStats
    from conspo.memory import GIB, RUNTIME_GIB, ModelShape, estimate
    from conspo.objective import SingleProcess, build_objective
    from conspo.runconfig import parse_config
    from conspo.train import optimizer_steps, policy_passes

    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    accelerator = Accelerator(cpu=not cuda)
    device = accelerator.device
    dtype = "bfloat16" if cuda else "float32"
    cfg = parse_config({
        "model": {"path": "unused", "dtype": dtype}, "data": {"train": "unused"}, "method": {"name": args.method},
        "rollout": {"group_size": args.rows, "max_prompt_tokens": prompt, "max_new_tokens": response},
        "train": {"prompts_per_step": 1, "max_tokens_per_micro_batch": max_tokens, "logit_chunk_tokens": args.chunk,
                  "gradient_checkpointing": True, "lr": 1e-6}}, check_paths=False)
    config = model_config(args.tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    forward = policy_passes(accelerator, model, accelerator.unwrap_model(model), cfg, pad_id=0)
    objective = build_objective(cfg.method.name)
    batch = synthetic_batch(args.rows, prompt, response, config.vocab_size, device)
    batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        begun = time.perf_counter()
        stats = ForwardStats()
        batch.old_logprobs, entropy = forward.token_logprobs(batch, entropy=True)  # stage 4
        stats.add_entropy(entropy, batch.response_mask)
        optimizer_steps(objective, batch, forward, old_from_pass=False, stats=stats, optimizer=optimizer,
                        scheduler=scheduler, accelerator=accelerator, model=model, collective=SingleProcess(),
                        cfg=cfg, step=0, progress=0.0)  # stage 6
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - begun

    step()  # allocates AdamW's moments
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else 0
    seconds = step()
    shape = ModelShape.from_config(config)
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 80.0
    planned = estimate("gpu_step", MODEL_ID, cfg, shape, {"nodes": 1, "gpus_per_node": 1, "gpu_memory_gib": gpu_gib})
    tokens = args.rows * (prompt + response)
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "shape": "tiny" if args.tiny else MODEL_ID,
        "rows": args.rows, "prompt": prompt, "response": response, "max_tokens_per_micro_batch": max_tokens,
        "logit_chunk_tokens": args.chunk, "micro_batches": len(forward.split(batch)), "method": args.method,
        "step_seconds": seconds, "tokens_per_s": tokens / seconds,
        "measured_peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "measured_peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else None,
        "measured_resident_gib": resident / GIB if cuda else None,
        "planned_state_gib": planned.state / GIB, "planned_micro_batch_gib": planned.stage / GIB,
        "planned_update_without_runtime_gib": (planned.update - RUNTIME_GIB * GIB) / GIB,
        "wall_seconds": time.perf_counter() - started,
    }
    for key, value in figures.items():
        print(f"{key:36s} {value:.3f}" if isinstance(value, float) else f"{key:36s} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
