"""What a training run keeps on disk in its output folder DIR, and how it resumes from it.

- DIR/checkpoints/step-{N:06d}/: the policy for evaluation, a `save_pretrained` folder (safetensors + tokenizer),
  at every `train.checkpoint_every` steps and the last; all kept.
- DIR/state/step-{N:06d}/: the newest resumable state only: accelerate's `save_state` (model, optimizer, scheduler
  and the python/numpy/torch RNG states of every rank; sharded the way the engine needs under FSDP/DeepSpeed;
  loaded with weights_only=True), `trainer_state.json` (step, data-stream position, training progress: the margin
  schedule's input) and `objective_state.pt` (the objective's own state, e.g. CLIPO's contrastive head). Written
  at every checkpoint step, and every `train.save_every` steps or `train.save_every_minutes` of wall time
  (`SaveSchedule`), so a preemption loses at most that much work whatever the evaluation cadence.
- DIR/metrics.jsonl: one line per step, cut back to the resumed step on every start (to nothing on a fresh one).

Every save is written into `NAME.tmp/` (every rank) and renamed to `NAME/` by the main process once complete
(os.replace): a folder without the suffix is complete. Only then are older states deleted; `tidy` at start-up
removes `.tmp` leftovers, states older than the newest (a kill between the rename and that deletion) and checkpoints
past the step resumed from (they are written again), so a kill at any point leaves nothing stale behind.

A run whose config changed is not resumed: `move_aside` moves everything it wrote to DIR/superseded/<time>/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import torch

from .atomic import write_text_atomic

STATE_FILE = "trainer_state.json"
OBJECTIVE_FILE = "objective_state.pt"
STEP_DIR = re.compile(r"^step-(\d{6})$")
# what a run writes into its output folder (anything else there, e.g. the workflow's run.yaml, is not the run's)
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "train.log", "done.json", "checkpoints", "state", "tensorboard")
SUPERSEDED = "superseded"


def step_dir(out: Path, step: int) -> Path:
    """The evaluation checkpoint of `step`."""
    return Path(out) / "checkpoints" / f"step-{step:06d}"


def state_dir(out: Path, step: int) -> Path:
    """The resumable state of `step`."""
    return Path(out) / "state" / f"step-{step:06d}"


def _complete(root: Path) -> dict[int, Path]:
    """{step: folder} of the complete step folders under `root`."""
    if not root.is_dir():
        return {}
    return {int(STEP_DIR.match(p.name).group(1)): p for p in root.iterdir() if STEP_DIR.match(p.name)}


def latest_state(out: Path) -> Path | None:
    """The complete resumable state with the highest step, or None."""
    states = {step: p for step, p in _complete(Path(out) / "state").items() if (p / STATE_FILE).is_file()}
    return states[max(states)] if states else None


def tidy(out: Path) -> None:
    """Start-up clean-up (main process, before resuming): `.tmp` leftovers of a killed save, every state but the
    newest (the one resumed from), and the checkpoints of steps after it (the resumed run writes them again)."""
    for root in (Path(out) / "checkpoints", Path(out) / "state"):
        if root.is_dir():
            for leftover in root.glob("step-*.tmp"):
                shutil.rmtree(leftover, ignore_errors=True)
    newest = latest_state(out)
    if newest is not None:
        drop_older_states(newest)
    resumed_step = int(STEP_DIR.match(newest.name).group(1)) if newest is not None else 0
    for step, path in _complete(Path(out) / "checkpoints").items():
        if step > resumed_step:
            shutil.rmtree(path, ignore_errors=True)


def _begin(accelerator, final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def save_checkpoint(accelerator, model, tokenizer, out: Path, step: int) -> Path:
    """The policy of `step` as DIR/checkpoints/step-N/ (a collective: every rank calls it)."""
    final = step_dir(out, step)
    tmp = _begin(accelerator, final)
    state_dict = accelerator.get_state_dict(model)  # the full state dict (a collective under FSDP/DeepSpeed)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _commit(tmp, final)
    accelerator.wait_for_everyone()
    return final


def save_state(accelerator, out: Path, step: int, trainer_state: dict, objective_state: dict) -> Path:
    """The resumable state of `step` as DIR/state/step-N/, then older states deleted (a collective)."""
    final = state_dir(out, step)
    tmp = _begin(accelerator, final)
    accelerator.save_state(str(tmp / "accelerate"), safe_serialization=True)
    # every rank writes its own RNG states at the end of save_state: all must be done before the folder is renamed
    # (a rank still writing into the .tmp folder after the rename crashed a two-process DeepSpeed run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(objective_state, tmp / OBJECTIVE_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        _commit(tmp, final)
        drop_older_states(final)
    accelerator.wait_for_everyone()
    return final


def drop_older_states(newest: Path) -> None:
    """Delete every state beside `newest`: only the newest is resumed from."""
    for path in _complete(newest.parent).values():
        if path != newest:
            shutil.rmtree(path, ignore_errors=True)


def load_state(accelerator, path: Path) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG states from `path`; return its trainer and objective states."""
    accelerator.load_state(str(Path(path) / "accelerate"))
    objective_state = torch.load(Path(path) / OBJECTIVE_FILE, map_location="cpu", weights_only=True)
    return json.loads((Path(path) / STATE_FILE).read_text()), objective_state


class SaveSchedule:
    """When a resumable state is due after a step: at every checkpoint step, every `every` steps, and once
    `minutes` of wall time have passed since the last state (or the start)."""

    def __init__(self, checkpoint_steps, every: int | None = None, minutes: float | None = None, clock=time.monotonic):
        self.checkpoint_steps, self.every, self.minutes, self.clock = set(checkpoint_steps), every, minutes, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        """Whether a state should be written now that `step` steps are complete."""
        return (step in self.checkpoint_steps or (self.every is not None and step % self.every == 0)
                or (self.minutes is not None and self.clock() - self.last >= 60.0 * self.minutes))

    def saved(self) -> None:
        self.last = self.clock()


def truncate_metrics(metrics_path: Path, last_step: int) -> None:
    """Keep the metrics lines of steps <= last_step (steps after the resumed state are done again; a fresh start
    keeps none); a torn last line from a kill is dropped. Rewritten atomically."""
    if not metrics_path.exists():
        return
    kept = []
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_text_atomic(metrics_path, "".join(line + "\n" for line in kept))


def move_aside(out: Path) -> Path | None:
    """Move what a run wrote into `out` (RUN_OUTPUTS) to out/superseded/<time>/, so that a run started over in `out`
    resumes nothing stale and nothing earlier is lost; other files in `out` stay. The destination, or None when
    there was nothing to move."""
    present = [Path(out) / name for name in RUN_OUTPUTS if (Path(out) / name).exists()]
    if not present:
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    destination = Path(out) / SUPERSEDED / stamp
    suffix = 1
    while destination.exists():
        destination, suffix = Path(out) / SUPERSEDED / f"{stamp}-{suffix}", suffix + 1
    destination.mkdir(parents=True)
    for path in present:
        os.replace(path, destination / path.name)
    return destination
