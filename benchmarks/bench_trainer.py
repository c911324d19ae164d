"""Time per training step of `conspo train` against TRL's GRPOTrainer on the identical tiny configuration, and
ConSPO's step time relative to GRPO's in this trainer; beside each, the share of its groups with both a correct and an
incorrect rollout (the groups that carry a gradient) and its mean gradient norm; peak memory of each.

Identical configuration: the same warm-started tiny character-level Qwen2 (`build_tiny_model` with the defaults
config/tiny.yaml builds tiny-a with: it solves some of its synthetic tasks, so groups are mixed and the updates are
not zero; an untrained model would time generation and empty updates), the same synthetic prompts,
G rollouts per prompt, prompts per step, max completion length, lr, AdamW, no KL, one optimizer step per rollout
batch, transformers generation on CPU, the same verifier as the reward, and the GRPO loss (TRL `loss_type="grpo"`,
unbiased group std with eps 1e-4 in both). The runners take turns in every round (common.time_interleaved), each
round a fresh short run; the first step of every run is warm-up and not counted. Step time is wall-clock from the
start of generation to the end of the optimizer step. Peak memory: the maximum resident set size of a child
process that runs one trainer alone, and the peak during the run above the child's size once every runner's
libraries are imported (the training's own memory; imports dominate the whole peak).

    python -m benchmarks trainer [--prompts 8] [--group-size 8] [--max-new-tokens 40] [--steps 6] [--rounds 5]
                                 [--model DIR] [--records DIR]

`--model` reuses a warm-started checkpoint (e.g. results/models/tiny-a of the embedded default) instead of
building one (~1-4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RECORDS, print_table, write_record

GOAL_VS_TRL = 1.0
GOAL_CONSPO_VS_GRPO = 1.1
GRPO_AS_TRL = {"advantage_std": "unbiased", "advantage_eps": 1e-4}  # TRL's group scaling


def prepare(root: Path, n_prompts: int, model: Path | None = None) -> tuple[Path, Path]:
    """The policy (tiny-a of config/tiny.yaml: build_tiny_model's defaults, warm-started) and the training prompts."""
    from conspo.data import write_jsonl
    from conspo.models import build_tiny_model
    from conspo.synthetic import make_tasks

    if model is None:
        model = root / "model"
        build_tiny_model(model, seed=0)
    write_jsonl(root / "train.jsonl", make_tasks("train-deepscaler", n_prompts, seed=0))
    return model, root / "train.jsonl"


def mixed_share(rewards: list[float], group_size: int) -> float:
    """Share of the groups (consecutive `group_size` rewards) holding both a correct and an incorrect rollout."""
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards), group_size)]
    return sum(min(g) < max(g) for g in groups) / len(groups)


def ours(model: Path, data: Path, out: Path, method: str, params: dict, args) -> dict[str, list[float]]:
    """Per-step wall times (steps after the first), shares of mixed groups and gradient norms of `conspo train`."""
    from conspo.runconfig import parse_config
    from conspo.train import train

    rollouts = args.prompts * args.group_size
    cfg = parse_config({
        "model": {"path": str(model)}, "data": {"train": str(data)}, "method": {"name": method, "params": params},
        "rollout": {"group_size": args.group_size, "max_new_tokens": args.max_new_tokens},
        "train": {"prompts_per_step": args.prompts, "micro_batch_size": rollouts, "total_steps": args.steps,
                  "lr": 1e-5, "checkpoint_every": 10**6, "max_grad_norm": 1.0},
        "verifier": {"workers": 1}})
    train(cfg, out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"times": [line["time/step"] for line in lines[1:]],
            "rollout": [line["time/rollout"] for line in lines[1:]], "update": [line["time/update"] for line in lines[1:]],
            "length": [line["response_length"] for line in lines[1:]],
            "mixed": [1.0 - line["degenerate_groups"] for line in lines],
            "grad_norm": [line["grad_norm"] for line in lines]}


def trl_grpo(model: Path, data: Path, out: Path, args) -> dict[str, list[float]]:
    """Per-step wall times (steps after the first), shares of mixed groups and gradient norms of TRL's
    GRPOTrainer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from conspo.data import format_prompt, read_jsonl
    from conspo.verifier import Verifier

    records = read_jsonl(data)
    dataset = Dataset.from_list([{"prompt": format_prompt(r["problem"]), "answer": r["answer"]} for r in records])
    verifier = Verifier(workers=1)
    mixed: list[float] = []

    def reward(completions, answer, **_):  # TRL passes each prompt's G completions one after another
        rewards = [float(v.correct) for v in verifier.verify(list(completions), list(answer))]
        mixed.append(mixed_share(rewards, args.group_size))
        return rewards

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.started = [], 0.0

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.started)

    rollouts = args.prompts * args.group_size
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens, max_steps=args.steps,
        learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, loss_type="grpo", scale_rewards="group", num_iterations=1, temperature=1.0, top_p=1.0, top_k=0,
        use_vllm=False, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, dataloader_num_workers=0)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model)
    timer = StepTimes()
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    try:
        trainer.train()
    finally:
        verifier.close()
    return {"times": timer.times[1:], "mixed": mixed,
            "grad_norm": [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]}


def peak_rss_mib(runner: str, args) -> dict[str, float]:
    """Peak resident set size of a fresh process that runs `runner` once, and the peak during the run itself above
    the process's size when the run starts. Every runner's libraries (TRL, datasets, this trainer) are imported and
    the model and data written first, and the kernel's high-water mark is reset then (/proc/self/clear_refs), so the
    second number is the training's own memory: model copies, optimizer state, activations, generation caches."""
    code = "import sys; from benchmarks.bench_trainer import run_one; run_one(sys.argv[1:])"
    argv = [runner, str(args.prompts), str(args.group_size), str(args.max_new_tokens), str(args.steps),
            str(args.model)]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    process_peak, baseline, run_peak = map(float, done.stdout.strip().splitlines()[-1].split())
    return {"peak": process_peak, "above_baseline": run_peak - baseline}


def _memory_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: high-water mark since the last reset), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_one(argv: list[str]) -> None:
    """Child process of `peak_rss_mib`: prints the process's peak RSS, the RSS before the run and the peak RSS
    during the run, in MiB."""
    import datasets  # noqa: F401  (imported before the baseline, like every runner's libraries)
    import trl  # noqa: F401

    import conspo.train  # noqa: F401

    runner, prompts, group_size, max_new_tokens, steps, model = argv
    args = argparse.Namespace(prompts=int(prompts), group_size=int(group_size), max_new_tokens=int(max_new_tokens),
                              steps=int(steps))
    with tempfile.TemporaryDirectory() as tmp:
        model, data = prepare(Path(tmp), 64, Path(model))
        process_peak = _memory_mib("VmHWM")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the high-water mark to the current RSS
        baseline = _memory_mib("VmRSS")
        RUNNERS[runner](model, data, Path(tmp) / "out", args)
        run_peak = _memory_mib("VmHWM")
    print(max(process_peak, run_peak), baseline, run_peak)


RUNNERS = {
    "trl_grpo": trl_grpo,
    "conspo_train_grpo": lambda model, data, out, args: ours(model, data, out, "grpo", GRPO_AS_TRL, args),
    "conspo_train_conspo": lambda model, data, out, args: ours(model, data, out, "conspo", {}, args),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40, help="config/tiny.yaml's (a boxed answer fits)")
    parser.add_argument("--steps", type=int, default=6, help="steps per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one run of each per round)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--model", type=Path, default=None,
                        help="a warm-started tiny checkpoint to reuse (default: build tiny-a's, build_tiny_model)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    args = parser.parse_args(argv)

    results: dict[str, dict[str, list[float]]] = {name: {} for name in RUNNERS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args.model, data = prepare(root, max(64, args.prompts * (args.steps + 1)), args.model)
        for round_index in range(args.rounds):
            for name, runner in RUNNERS.items():
                for key, values in runner(args.model, data, root / f"{name}-{round_index}", args).items():
                    results[name].setdefault(key, []).extend(values)
        memory = {} if args.no_memory else {name: peak_rss_mib(name, args) for name in RUNNERS}

    times = {name: result["times"] for name, result in results.items()}
    mixed = {name: statistics.fmean(result["mixed"]) for name, result in results.items()}
    grad_norm = {name: statistics.fmean(result["grad_norm"]) for name, result in results.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    vs_trl = median["conspo_train_grpo"] / median["trl_grpo"]
    conspo_vs_grpo = median["conspo_train_conspo"] / median["conspo_train_grpo"]
    nan = {"peak": float("nan"), "above_baseline": float("nan")}
    rows = [[name, 1000 * median[name], 1000 * min(times[name]), len(times[name]), mixed[name], grad_norm[name],
             memory.get(name, nan)["peak"], memory.get(name, nan)["above_baseline"]] for name in RUNNERS]
    print_table(["trainer", "median ms/step", "min ms/step", "steps timed", "mixed groups", "mean grad norm",
                 "peak RSS MiB", "training's own MiB"], rows)
    print(f"conspo train (GRPO) / TRL GRPOTrainer: {vs_trl:.3f} (goal <= {GOAL_VS_TRL})")
    print(f"ConSPO / GRPO step time in conspo train: {conspo_vs_grpo:.3f} (goal <= {GOAL_CONSPO_VS_GRPO})")
    split = {name: {"rollout_ms": 1000 * statistics.median(results[name]["rollout"]),
                    "update_ms": 1000 * statistics.median(results[name]["update"]),
                    "response_length": statistics.fmean(results[name]["length"])}
             for name in RUNNERS if "rollout" in results[name]}
    for name, parts in split.items():
        print(f"{name}: median rollout {parts['rollout_ms']:.0f} ms, update {parts['update_ms']:.0f} ms, "
              f"mean response length {parts['response_length']:.1f} tokens")
    path = write_record("trainer", {
        "config": {"prompts_per_step": args.prompts, "group_size": args.group_size,
                   "max_new_tokens": args.max_new_tokens, "steps_per_run": args.steps, "rounds": args.rounds,
                   "model": "tiny char-level Qwen2 warm-started as config/tiny.yaml's tiny-a (build_tiny_model "
                            "defaults: 3 layers, hidden 128, head_dim 64, 600 steps, half the answers unboxed)",
                   "device": "cpu"},
        "step_seconds": times,
        "mixed_group_share": mixed,  # per trainer: mean over steps of the share of groups with a gradient
        "step_split": split,  # conspo train's own split of a step: median rollout and update ms, mean response length
        "mean_grad_norm": grad_norm,
        "median_ms_per_step": {name: 1000 * value for name, value in median.items()},
        "peak_rss_mib": memory,  # per trainer: process peak, and the run's peak above its starting RSS
        "ratio_vs_trl_grpo": vs_trl, "goal_vs_trl_grpo": GOAL_VS_TRL,
        "ratio_conspo_vs_grpo": conspo_vs_grpo, "goal_conspo_vs_grpo": GOAL_CONSPO_VS_GRPO,
        "load_average": list(__import__("os").getloadavg()),
    }, args.records)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
