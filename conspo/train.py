"""`conspo train --config run.yaml --out DIR [--max-steps N]`: one RL training run (docs/training.md).

Each step, top to bottom:
  1. prompts: the next `prompts_per_step` of a seeded per-epoch permutation; rank r of W takes a contiguous share,
     so every group lives whole on one rank;
  2. rollouts: G samples per prompt from the live policy (transformers on CPU, TRL's vLLM generation on GPUs);
  3. rewards: the verifier's verdicts, plus DAPO's overlong shaping when configured; with dynamic sampling, groups
     whose rewards are all equal are dropped and more prompts are drawn (capped rounds);
  4. old log-probs: one no-grad forward (and the reference policy's when the objective needs it);
  5. the objective's own preparation hook, then its advantages from group statistics;
  6. updates: `mini_batches_per_step` x `ppo_epochs` optimizer steps, each through `accumulate_gradients` (exact
     group gradients, scores all-gathered across ranks); the first is on-policy and reuses the old log-probs as its
     terms; gradient clipping, AdamW, the learning-rate schedule;
  7. metrics line, a checkpoint every `checkpoint_every` steps and at the last, and a resumable state at each
     checkpoint and every `save_every` steps / `save_every_minutes` (conspo.checkpoint).
Every pass through the policy (4-6) is conspo.forward.PolicyForward's: micro-batches by the token budget
`train.max_tokens_per_micro_batch`, log-probs through the output head in chunks of `train.logit_chunk_tokens`.
The trainer never looks at a method's name: only at the objective's attributes (`needs_reference`).
Resuming: a re-run with the same config and DIR continues from the newest resumable state. A re-run with a changed
config is refused, or with --replace-changed-run (what the workflow passes) the earlier run's files are moved to
DIR/superseded/<time>/ and the run starts from step 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs,
                               parse_flag_from_env, set_seed)
from tqdm import tqdm

from .atomic import write_json_atomic, write_text_atomic
from .batch import RolloutBatch
from .checkpoint import (SaveSchedule, latest_state, load_state, move_aside, save_checkpoint, save_state, tidy,
                         truncate_metrics)
from .data import format_prompt, read_jsonl
from .distributed import collective_for, configure_deepspeed
from .forward import ForwardStats, PolicyForward, output_head
from .learning import signal_share, summarise_file
from .losses import degenerate_fraction
from .models import load_policy
from .objective import Objective, RolloutContext, accumulate_gradients, build_objective, gradient_pass_suffices
from .rollout import chunk_seed, make_sampler, pad, prompt_token_ids
from .runconfig import (ConfigError, RunConfig, check_world_size, checkpoint_steps, config_to_dict, load_config,
                        parse_config, total_steps)
from .shaping import DynamicSampling, OverlongShaping
from .verifier import Verifier, job_cpus

log = logging.getLogger("conspo.train")

TIMING_KEYS = ("time/step", "time/rollout", "time/update", "throughput/tokens_per_s")


class PromptStream:
    """The order in which training prompts are drawn: a seeded permutation per epoch, consumed in order. Its
    position (epoch, offset) is part of the checkpoint."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.offset = n, seed, 0, 0

    def _order(self, epoch: int) -> list[int]:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(chunk_seed(self.seed, epoch))).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            order = self._order(self.epoch)
            grab = order[self.offset:self.offset + k - len(out)]
            out += grab
            self.offset += len(grab)
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


@dataclass
class Rollouts:
    """One generation round of this rank, row-wise (G rows per prompt)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    answers: list[str]
    rewards: torch.Tensor
    correct: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor

    def select(self, keep: torch.Tensor) -> "Rollouts":
        rows = torch.nonzero(keep).flatten().tolist()
        return Rollouts([self.prompt_ids[i] for i in rows], [self.response_ids[i] for i in rows],
                        [self.texts[i] for i in rows], [self.answers[i] for i in rows], self.rewards[keep],
                        self.correct[keep], self.truncated[keep], self.group_ids[keep])

    @staticmethod
    def cat(parts: list["Rollouts"]) -> "Rollouts":
        return Rollouts(*(sum((getattr(p, f) for p in parts), []) for f in ("prompt_ids", "response_ids", "texts",
                                                                             "answers")),
                        *(torch.cat([getattr(p, f) for p in parts]) for f in ("rewards", "correct", "truncated",
                                                                                "group_ids")))


def lr_lambda(schedule: str, warmup: int, total: int):
    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        done = (i - warmup) / max(1, total - warmup)
        return {"constant": 1.0, "linear": 1.0 - done, "cosine": 0.5 * (1.0 + math.cos(math.pi * done))}[schedule]
    return factor


def setup_logging(out: Path, main_process: bool) -> None:
    """Log to DIR/train.log (main process), replacing the file of an earlier run in the same Python process."""
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()
    if main_process:
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def first_difference(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
            if found:
                return found
        return None
    return None if a == b else prefix


def policy_passes(accelerator, model, policy, cfg: RunConfig, pad_id: int) -> PolicyForward:
    """The forward passes of `model` (as prepared by accelerate; `policy` unwrapped, whose output head is swapped for
    the chunked log-probs) in this process: as many micro-batches as the rank that needs most, DDP's no_sync but on
    an optimizer step's last micro-batch, accelerate's backward with that micro-batch as DeepSpeed's accumulation
    boundary (the engine then clips and steps once per optimizer step)."""
    ddp = accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)

    def agree(count: int) -> int:
        if accelerator.num_processes == 1:
            return count
        return int(accelerator.gather(torch.tensor([count], device=accelerator.device)).max())

    def no_sync(last: bool):
        return accelerator.no_sync(model) if ddp and not last else nullcontext()

    def backward(surrogate, last: bool) -> None:
        accelerator.sync_gradients = last
        accelerator.backward(surrogate)

    return PolicyForward(model, output_head(policy), temperature=cfg.rollout.temperature,
                         max_tokens=cfg.train.max_tokens_per_micro_batch, chunk_tokens=cfg.train.logit_chunk_tokens,
                         pad_id=pad_id, agree=agree, no_sync=no_sync, backward=backward)


def rollout_batch(rollouts: Rollouts, pad_id: int, device) -> RolloutBatch:
    """A rank's rollouts as one batch (prompts left-padded, responses right-padded; old log-probs still zero)."""
    prompt_ids, prompt_mask = pad(rollouts.prompt_ids, pad_id, left=True)
    response_ids, response_mask = pad(rollouts.response_ids, pad_id, left=False)
    return RolloutBatch.create(
        prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device), response_ids=response_ids.to(device),
        response_mask=response_mask.to(device), old_logprobs=torch.zeros(response_ids.shape, device=device),
        rewards=rollouts.rewards.to(device), correct=rollouts.correct.to(device),
        group_ids=rollouts.group_ids.to(device), truncated=rollouts.truncated.to(device))


def optimizer_steps(objective: Objective, batch: RolloutBatch, forward: PolicyForward, *, old_from_pass: bool,
                    stats: ForwardStats, optimizer, scheduler, accelerator, model, collective, cfg: RunConfig,
                    step: int, progress: float) -> tuple[list[float], list[float], list[dict]]:
    """Stage 6: `mini_batches_per_step` mini-batches of whole groups x `ppo_epochs` optimizer steps, each through
    `accumulate_gradients`. The first is on-policy: its terms are the old log-probs' (or, `old_from_pass`, the
    gradient pass's own). Returns each step's loss, gradient norm and objective metrics; token counts go to `stats`."""
    t = cfg.train
    group_ids = torch.unique(batch.group_ids)
    losses, grad_norms, metrics = [], [], []
    for epoch in range(t.ppo_epochs):
        order = group_ids
        if t.mini_batches_per_step * t.ppo_epochs > 1:
            shuffle = torch.Generator().manual_seed(chunk_seed(cfg.seed, step, epoch))
            order = group_ids[torch.randperm(len(group_ids), generator=shuffle)]
        for chosen in torch.tensor_split(order, t.mini_batches_per_step):
            mini = batch.select(torch.nonzero(torch.isin(batch.group_ids, chosen)).flatten())
            on_policy = not losses  # no optimizer step yet since the rollouts: old log-probs are current
            passes = forward.gradient_passes(old_from_pass=on_policy and old_from_pass, on_policy=on_policy)
            terms = objective.sequence_terms(mini, mini.old_logprobs) if on_policy and not old_from_pass else None
            optimizer.zero_grad(set_to_none=True)
            loss, objective_metrics = accumulate_gradients(objective, mini, passes, progress=progress, terms=terms,
                                                           collective=collective, skip_zero_rows=t.skip_zero_rows)
            # under DeepSpeed: the engine has clipped and stepped; this returns its norm, step() is a no-op
            norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            stats.merge(passes.stats)
            losses.append(loss)
            grad_norms.append(float("nan") if norm is None else float(norm))
            metrics.append(objective_metrics)
    return losses, grad_norms, metrics


# keys that change how a run is carried out, not what it computes: a run resumes under new values of these
OPERATIONAL_KEYS = (("train", "save_every"), ("train", "save_every_minutes"), ("train", "skip_zero_rows"),
                    ("verifier", "workers"))


def config_change(saved: Path, cfg: RunConfig) -> str | None:
    """The first dotted key at which `cfg` differs from the config a run in the same folder started with (`saved`,
    its config.yaml), both with defaults filled (a key added to the run config since then, at its default, is no
    change) and OPERATIONAL_KEYS aside; None if they are the same."""
    try:
        before = config_to_dict(parse_config(yaml.safe_load(saved.read_text()), check_paths=False))
    except ConfigError as err:  # e.g. a key this version no longer has
        return str(err).partition(":")[0]
    now = config_to_dict(cfg)
    for section, key in OPERATIONAL_KEYS:
        before[section][key] = now[section][key]
    return first_difference(before, now)


def train(cfg: RunConfig, out: Path, replace_changed: bool = False) -> dict:
    """Train (or resume) the run of `cfg` in `out`. A folder holding a run started with another config is refused,
    or with `replace_changed` moved aside (conspo.checkpoint.move_aside) and the run started from step 0."""
    # cpu=True on machines without CUDA: accelerate then joins the launched processes in a gloo group (MULTI_CPU).
    # An accelerate config with DeepSpeed sets ACCELERATE_USE_DEEPSPEED; accelerate drops DeepSpeed under cpu=True,
    # so without CUDA it gets cpu=False and gloo named (DeepSpeed's CPU accelerator).
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    cpu_only = not torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(broadcast_buffers=False)]
    if deepspeed and cpu_only:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(cpu=cpu_only and not deepspeed, kwargs_handlers=handlers)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    check_world_size(cfg, world)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    changed = config_change(saved, cfg) if saved.exists() else None
    if changed and not replace_changed:
        raise ConfigError(f"{changed}: differs from the config this run started with ({saved}); use a new --out")
    accelerator.wait_for_everyone()  # every rank has compared before the folder changes
    moved = move_aside(out) if changed and accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    setup_logging(out, accelerator.is_main_process)
    if changed:
        log.info("%s differs from the config the run in %s started with: its files moved to %s; starting from step 0",
                 changed, out, moved)
    if (out / "done.json").exists():
        log.info("%s: run already finished (done.json)", out)
        return json.loads((out / "done.json").read_text())
    if accelerator.is_main_process and not saved.exists():
        write_text_atomic(saved, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    # ------------------------------------------------------------------------------------------------ set-up
    set_seed(cfg.seed)
    t, G = cfg.train, cfg.rollout.group_size
    records = read_jsonl(cfg.data.train)[:cfg.data.limit]
    if cfg.data.n_prompts is not None and len(records) != cfg.data.n_prompts:
        raise ConfigError(f"data.n_prompts: {cfg.data.n_prompts}, but {cfg.data.train} holds {len(records)} records"
                          f"{' (after data.limit)' if cfg.data.limit is not None else ''}: the run's steps and "
                          "checkpoints were planned on n_prompts")
    n_steps = total_steps(cfg, len(records))
    saves = set(checkpoint_steps(cfg, len(records)))
    model, tokenizer = load_policy(cfg.model.path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    encoded = [prompt_token_ids(tokenizer, format_prompt(r["problem"]), cfg.model.chat_template) for r in records]
    usable = [i for i, ids in enumerate(encoded) if len(ids) <= cfg.rollout.max_prompt_tokens]
    if not usable:
        raise ConfigError(f"rollout.max_prompt_tokens: all {len(records)} prompts are longer than "
                          f"{cfg.rollout.max_prompt_tokens} tokens")
    if t.gradient_checkpointing:
        plugin = accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None
        if plugin is not None and plugin.activation_checkpointing:
            raise ConfigError("train.gradient_checkpointing: the accelerate config already checkpoints the decoder "
                              "layers (fsdp_activation_checkpointing); keep one of the two")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    objective = build_objective(cfg.method.name, cfg.method.params)
    reference = None
    if objective.needs_reference:
        reference = load_policy(cfg.model.path, dtype=cfg.model.dtype,
                                trust_remote_code=cfg.model.trust_remote_code)[0]
    updates_per_step = t.mini_batches_per_step * t.ppo_epochs
    # One optimizer step per rollout batch and no prepare hook: the behaviour policy is the current one, so the old
    # log-probs can be the gradient pass's own, detached, and the separate no-grad pass over the batch is skipped
    # (as TRL does with num_iterations = 1). Linear objectives always can; sequence-score objectives only when the
    # rank's batch is one micro-batch of the token budget on every rank, since their coefficients need every score
    # of a group before any gradient flows (decided per step below: lengths and dynamic sampling vary the batch).
    single_update = updates_per_step == 1 and type(objective).prepare is Objective.prepare
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps,
                                  weight_decay=t.weight_decay)
    # not passed to prepare(): accelerate would step it once per process; registered for checkpoints instead
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.lr_schedule, t.warmup_steps, n_steps * updates_per_step))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator.state.deepspeed_plugin, cfg, world)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if reference is not None:
        reference = accelerator.prepare_model(reference, evaluation_mode=True)
    policy = accelerator.unwrap_model(model)
    sampler = make_sampler(cfg, policy, tokenizer, accelerator)
    collective = collective_for(accelerator)
    stop_ids = {tokenizer.eos_token_id, *(lambda e: e if isinstance(e, list) else [e])(
        getattr(policy.generation_config, "eos_token_id", None))} - {None}
    pad_id = tokenizer.pad_token_id
    forward = policy_passes(accelerator, model, policy, cfg, pad_id)
    reference_forward = None if reference is None else \
        policy_passes(accelerator, reference, accelerator.unwrap_model(reference), cfg, pad_id)
    shaping = OverlongShaping(cfg.overlong_shaping.buffer, cfg.overlong_shaping.penalty) \
        if cfg.overlong_shaping.enabled else None
    stream = PromptStream(len(usable), cfg.seed)

    start = 0
    if accelerator.is_main_process:  # the newest state stays; .tmp leftovers, older states, later checkpoints go
        tidy(out)
    accelerator.wait_for_everyone()
    resume_from = latest_state(out)
    if resume_from is not None:
        state, objective_state = load_state(accelerator, resume_from)
        objective.load_state_dict(objective_state)
        start = state["step"]
        stream.load(state["stream"])
        sampler.sync_weights()
        log.info("resumed from %s (step %d of %d)", resume_from, start, n_steps)
    else:
        log.info("run %s: %d prompts (%d usable), %d steps, method %s, %d process(es), %s", cfg.name, len(records),
                 len(usable), n_steps, cfg.method.name, world, accelerator.distributed_type.value)
    if accelerator.is_main_process:  # steps after `start` are done again (a fresh start keeps no line)
        truncate_metrics(out / "metrics.jsonl", start)
    schedule = SaveSchedule(saves, t.save_every, t.save_every_minutes)
    accelerator.wait_for_everyone()

    writer = None
    if accelerator.is_main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)  # drops events of redone steps
        except ImportError:
            pass

    # ------------------------------------------------------------------------------------------------ helpers
    def generate_round(indices, step, round_index, first_position, group_base):
        recs = [records[usable[i]] for i in indices]
        texts = [format_prompt(r["problem"]) for r in recs]
        prompt_ids = [encoded[usable[i]] for i in indices]
        responses = sampler.sample(texts, prompt_ids, G, (cfg.seed, step, round_index), first_position)
        rows = [resp for group in responses for resp in group]
        if any(len(r) == 0 for r in rows):
            raise RuntimeError("the rollout engine returned an empty response")
        decoded = tokenizer.batch_decode(rows, skip_special_tokens=True)
        answers = [r["answer"] for r in recs for _ in range(G)]
        verdicts = verifier.verify(decoded, answers)
        correct = torch.tensor([v.correct for v in verdicts])
        truncated = torch.tensor([r[-1] not in stop_ids for r in rows])
        rewards = correct.float()
        if shaping is not None:
            lengths = torch.tensor([len(r) for r in rows], dtype=torch.float32)
            rewards = shaping(rewards, lengths, cfg.rollout.max_new_tokens)
        group_ids = torch.arange(len(indices)).repeat_interleave(G) + group_base
        return Rollouts([ids for ids in prompt_ids for _ in range(G)], rows, decoded, answers, rewards, correct,
                        truncated, group_ids)

    def any_rank(flag: bool) -> bool:
        return bool(accelerator.reduce(torch.tensor([float(flag)], device=device), reduction="sum").item() > 0)

    # ------------------------------------------------------------------------------------------------ loop
    per_rank = t.prompts_per_step // world
    bar = tqdm(total=n_steps, initial=start, disable=not accelerator.is_main_process, desc=cfg.name, unit="step")
    metrics_file = out / "metrics.jsonl"
    # by default the job's CPUs, shared out among this node's ranks (each verifies its own rollouts)
    workers = cfg.verifier.workers or max(1, job_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    with Verifier(cfg.verifier.extraction, cfg.verifier.timeout, workers) as verifier:
        for step in range(start, n_steps):
            progress = min(step / n_steps, 1.0)
            started = time.perf_counter()

            # 1-3. prompts -> rollouts -> rewards (-> dynamic sampling)
            dynamic = DynamicSampling(per_rank, cfg.dynamic_sampling.max_rounds - 1) \
                if cfg.dynamic_sampling.enabled else None
            parts, round_index = [], 0
            while True:
                drawn = stream.take(t.prompts_per_step)
                mine = drawn[rank * per_rank:(rank + 1) * per_rank]
                rollouts = generate_round(mine, step, round_index, rank * per_rank,
                                          round_index * t.prompts_per_step + rank * per_rank)
                round_index += 1
                if dynamic is None:
                    parts.append(rollouts)
                    break
                if dynamic.wants_more():
                    parts.append(rollouts.select(dynamic.add(rollouts.rewards, rollouts.group_ids)))
                if not any_rank(dynamic.wants_more()):
                    break
            if dynamic is not None and dynamic.n_kept == 0:
                parts = [rollouts]  # nothing informative within the cap: train on the last round (never empty)
            rollouts = Rollouts.cat(parts)
            rollout_time = time.perf_counter() - started

            # 4. old (and reference) log-probs
            batch = rollout_batch(rollouts, pad_id, device)
            stats = ForwardStats()  # entropy of the behaviour policy, token ratios outside the clip band
            old_from_pass = single_update and gradient_pass_suffices(objective, len(forward.split(batch)))
            if not old_from_pass:  # else the gradient pass fills in old log-probs and entropies
                batch.old_logprobs, entropy = forward.token_logprobs(batch, entropy=True)
                stats.add_entropy(entropy, batch.response_mask)
            if reference_forward is not None:
                batch.ref_logprobs, _ = reference_forward.token_logprobs(batch)
            batch.validate()

            # 5. method-specific preparation, then advantages from whole groups
            context = RolloutContext(response_logprobs=lambda rows: forward.token_logprobs(rows)[0],
                                     pooled_hidden=forward.pooled_hidden, tokenizer=tokenizer,
                                     answers=rollouts.answers, responses=rollouts.texts, step=step, progress=progress,
                                     collective=collective)
            batch = objective.prepare(batch, context)
            batch = batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))

            # 6. optimizer steps: mini-batches of whole groups, ppo_epochs passes
            update_started = time.perf_counter()
            losses, grad_norms, objective_metrics = optimizer_steps(
                objective, batch, forward, old_from_pass=old_from_pass, stats=stats, optimizer=optimizer,
                scheduler=scheduler, accelerator=accelerator, model=model, collective=collective, cfg=cfg, step=step,
                progress=progress)
            sampler.sync_weights()
            update_time = time.perf_counter() - update_started

            # 7. metrics (global over ranks) and checkpoints
            info = batch.info
            rewards, _ = collective.gather(info.rewards)
            correct, _ = collective.gather(info.correct.float())
            groups, _ = collective.gather(info.group_ids)
            lengths, _ = collective.gather(info.lengths)
            truncated, _ = collective.gather(info.truncated.float())
            prompt_tokens = accelerator.reduce(batch.prompt_mask.sum().float().reshape(1), reduction="sum")
            token_metrics = stats.metrics(lambda counts: accelerator.reduce(counts.to(device), reduction="sum").cpu())
            step_time = time.perf_counter() - started
            record = {
                "step": step + 1,
                "progress": progress,
                "epoch": stream.epoch + stream.offset / stream.n,
                "reward": float(rewards.mean()),
                "pass_rate": float(correct.mean()),
                "degenerate_groups": degenerate_fraction(correct.bool(), groups),
                "signal_groups": signal_share(rewards, groups),  # groups whose rewards differ (learning.py)
                "response_length": float(lengths.mean()),
                "response_length_max": float(lengths.max()),
                "truncated": float(truncated.mean()),
                **token_metrics,  # entropy, clip_frac_low, clip_frac_high
                "loss": sum(losses) / len(losses),
                "grad_norm": sum(grad_norms) / len(grad_norms),
                "lr": scheduler.get_last_lr()[0],
                "rollouts": len(rewards),
                **{f"objective/{k}": sum(m[k] for m in objective_metrics) / len(objective_metrics)
                   for k in objective_metrics[0] if isinstance(objective_metrics[0][k], (int, float))},
                **(dynamic.metrics() if dynamic is not None else {}),
                "time/step": step_time,
                "time/rollout": rollout_time,
                "time/update": update_time,
                "throughput/tokens_per_s": float(prompt_tokens.item() + lengths.sum()) / step_time,
            }
            if accelerator.is_main_process:
                with metrics_file.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if writer is not None:
                    for key, value in record.items():
                        if isinstance(value, float) and math.isfinite(value):
                            writer.add_scalar(key, value, step + 1)
                log.info("step %d/%d reward %.3f pass %.3f signal %.2f loss %.4f grad %.3f len %.1f %.1fs", step + 1,
                         n_steps, record["reward"], record["pass_rate"], record["signal_groups"], record["loss"],
                         record["grad_norm"], record["response_length"], step_time)
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{record['loss']:.4f}")
            if step + 1 in saves:  # before the state: a state at N implies the checkpoint of N is there
                save_checkpoint(accelerator, model, tokenizer, out, step + 1)
            if any_rank(schedule.due(step + 1)):  # ranks' clocks differ: one says so, all save
                save_state(accelerator, out, step + 1,
                           {"step": step + 1, "total_steps": n_steps, "progress": (step + 1) / n_steps,
                            "stream": stream.state()}, objective.state_dict())
                schedule.saved()
    bar.close()
    done = {"steps": n_steps, "final_checkpoint": str(Path("checkpoints") / f"step-{n_steps:06d}"),
            "checkpoints": sorted(saves)}
    if accelerator.is_main_process:
        done["learning"] = summarise_file(metrics_file)
        if done["learning"]["learned_nothing"]:
            log.warning("this run learned nothing: %s; its table cells are marked, not ranked",
                        done["learning"]["reason"])
        write_json_atomic(out / "done.json", done)
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo train", description="one RL training run from a run config")
    parser.add_argument("--config", required=True, help="run config YAML (docs/design.md, docs/training.md)")
    parser.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, train.log")
    parser.add_argument("--max-steps", type=int, default=None, help="cap train.total_steps (recorded in the config)")
    parser.add_argument("--replace-changed-run", action="store_true",
                        help="if --out holds a run started with a different config, move its files to "
                             "OUT/superseded/<time>/ and start from step 0 (the workflow passes this; by hand, "
                             "prefer a new --out)")
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.max_steps is not None:
            if args.max_steps <= 0:
                raise ConfigError(f"--max-steps: must be > 0, got {args.max_steps}")
            cfg.train.total_steps = min(args.max_steps, cfg.train.total_steps or args.max_steps)
        train(cfg, Path(args.out), replace_changed=args.replace_changed_run)
    except ConfigError as err:
        log.error("bad run config %s: %s", args.config, err)
        print(f"conspo train: bad run config {args.config}: {err}")
        return 2
    return 0
