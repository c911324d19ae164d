"""Checkpoints of a training run: DIR/checkpoints/step-{N:06d}/ holds

- the policy as a `save_pretrained` folder (safetensors + tokenizer), loadable by the evaluation engines;
- `state/` (newest checkpoint only; older ones keep just the policy): accelerate's `save_state` (model, optimizer,
  scheduler and the python/numpy/torch RNG states of every
  rank; sharded the way the engine needs under FSDP/DeepSpeed; loaded with weights_only=True);
- `trainer_state.json`: step, data-stream position, training progress (the margin schedule's input);
- `objective_state.pt`: the objective's own state (e.g. CLIPO's contrastive head), loaded with weights_only=True.

Every rank writes into `step-N.tmp/`; the main process renames it to `step-N/` once all ranks are done (os.replace),
so a checkpoint folder without the `.tmp` suffix is complete. A kill at any point leaves either the previous
checkpoints or the new one, never a half-written one; `.tmp` leftovers are removed on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from .atomic import write_text_atomic

STATE_FILE = "trainer_state.json"
OBJECTIVE_FILE = "objective_state.pt"
STEP_DIR = re.compile(r"^step-(\d{6})$")


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir()
            if STEP_DIR.match(p.name) and (p / STATE_FILE).is_file() and (p / "state").is_dir()]
    return max(done, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)


def remove_partial(out: Path) -> None:
    root = Path(out) / "checkpoints"
    if root.is_dir():
        for p in root.glob("step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(accelerator, model, tokenizer, out: Path, step: int, trainer_state: dict,
                    objective_state: dict) -> Path:
    final = step_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"), safe_serialization=True)
    state_dict = accelerator.get_state_dict(model)  # the full state dict (a collective under FSDP/DeepSpeed)
    # every rank writes its own RNG states at the end of save_state: all must be done before the folder is renamed
    # (a rank still writing into step-N.tmp/ after the rename crashed a two-process DeepSpeed run)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(objective_state, tmp / OBJECTIVE_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for older in final.parent.iterdir():  # only the newest checkpoint is resumed from: drop older training states
            if older != final and STEP_DIR.match(older.name):
                shutil.rmtree(older / "state", ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG states from `path`; return its trainer and objective states."""
    accelerator.load_state(str(Path(path) / "state"))
    objective_state = torch.load(Path(path) / OBJECTIVE_FILE, map_location="cpu", weights_only=True)
    return json.loads((Path(path) / STATE_FILE).read_text()), objective_state


def truncate_metrics(metrics_path: Path, last_step: int) -> None:
    """Keep the metrics lines of steps <= last_step (steps after the resumed checkpoint are redone); a torn last line
    from a kill is dropped. Rewritten atomically."""
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
