"""Preemption at chosen points, and a changed config in the same folder.

- In-process kill points (a `Killed` exception raised from inside the save functions, where a SIGKILL can land):
  after steps are logged and before the first checkpoint is complete; between a checkpoint and the state of the
  same step; between renaming a state and deleting the older one. The rerun logs every step exactly once and leaves
  exactly the newest state, the checkpoints and nothing else.
- A real SIGKILL of `conspo train` at a random moment with `train.save_every: 2` and no checkpoint before the end:
  the rerun resumes and at most 2 steps are done again.
- When a state is due (`SaveSchedule`): checkpoint steps, every N steps, every M minutes of wall time.
- A changed config: refused by `conspo train`, moved aside with --replace-changed-run (what the workflow passes).
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

import conspo.checkpoint
import conspo.train
from conftest_models import tiny_model_path  # noqa: F401  (session fixture)
from conspo.checkpoint import SaveSchedule
from conspo.runconfig import ConfigError, parse_config
from conspo.train import train
from test_train import REPO, cli, env, metrics, run_config, tiny  # noqa: F401  (tiny: session fixture)


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point: nothing after it runs (BaseException: no `except Exception` stops it)."""


def kill_at(monkeypatch, module, name, when):
    """Make `module.name` raise Killed on the call for which `when(*args)` holds; earlier calls run as usual."""
    original = getattr(module, name)

    def patched(*args, **kwargs):
        if when(*args):
            raise Killed(name)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, patched)


def folder(out):
    """What a run folder holds: its checkpoints, states and leftovers, as sorted relative names."""
    return sorted(str(p.relative_to(out)) for root in ("checkpoints", "state") for p in (out / root).glob("*"))


def steps(out):
    return [record["step"] for record in metrics(out)]


KILL_POINTS = {  # two steps, a checkpoint at the last
    # kill point: (extra train settings, what to patch, when it "dies", folder contents after the kill)
    "after 2 logged steps, inside the first checkpoint's save": (
        {}, (conspo.checkpoint, "_commit", lambda tmp, final: True), ["checkpoints/step-000002.tmp"]),
    "between the first checkpoint and its state": (
        {}, (conspo.train, "save_state", lambda *a: a[2] == 2), ["checkpoints/step-000002"]),
    "between renaming the state of step 2 and deleting the older one": (
        {"save_every": 1}, (conspo.checkpoint, "drop_older_states", lambda newest: newest.name == "step-000002"),
        ["checkpoints/step-000002", "state/step-000001", "state/step-000002"]),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_each_point_leaves_every_step_logged_once_and_no_stale_state(tiny, tmp_path, monkeypatch, point):
    settings, (module, name, when), left = KILL_POINTS[point]
    cfg = parse_config(run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2, **settings))
    with monkeypatch.context() as patch:
        kill_at(patch, module, name, when)
        with pytest.raises(Killed):
            train(cfg, tmp_path)
    assert folder(tmp_path) == left
    killed_steps = steps(tmp_path)
    assert killed_steps == [1, 2]  # the kill came after steps were logged: a fresh start must cut them back
    train(cfg, tmp_path)
    assert steps(tmp_path) == [1, 2]  # every step once: nothing lost, nothing logged twice
    resumed = re.findall(r"resumed from \S+/state/step-(\d+)", (tmp_path / "train.log").read_text())
    assert resumed == (["000002"] if "renaming the state" in point else [])  # else a fresh start from step 0
    assert folder(tmp_path) == ["checkpoints/step-000002", "state/step-000002"]  # newest state only, no .tmp


def test_a_sigkill_loses_at_most_save_every_steps(tiny, tmp_path):
    """`conspo train` killed with SIGKILL at a random moment after its third logged step, with a resumable state
    every 2 steps and no checkpoint before the last (step 12): the rerun resumes, doing at most 2 steps again."""
    save_every, total = 2, 12
    raw = run_config(tiny, method="grpo", total_steps=total, checkpoint_every=total, save_every=save_every)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    process = subprocess.Popen(cli(config_path, out, [sys.executable]), env=env(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    metrics_path = out / "metrics.jsonl"
    seen = {}  # logged steps -> when they were first seen: the kill falls within about one step's time
    while process.poll() is None and time.monotonic() < deadline:
        logged = len(metrics_path.read_text().splitlines()) if metrics_path.exists() else 0
        seen.setdefault(logged, time.monotonic())
        if logged >= 3:
            step_time = seen[3] - seen.get(2, seen[3])
            time.sleep(random.uniform(0.0, 1.5 * step_time))  # anywhere in the next step or save
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "done.json").exists(), "the run finished before the kill"
    logged = len([line for line in metrics_path.read_text().splitlines() if line.endswith("}")])

    train(parse_config(raw), out)
    (resumed,) = re.findall(rf"resumed from \S+ \(step (\d+) of {total}\)", (out / "train.log").read_text())
    print(f"killed after {logged} logged steps, resumed from step {resumed}")
    assert 0 < logged - int(resumed) + 1 and logged - int(resumed) <= save_every
    assert steps(out) == list(range(1, total + 1))
    assert folder(out) == [f"checkpoints/step-{total:06d}", f"state/step-{total:06d}"]


def test_states_are_due_at_checkpoints_every_n_steps_and_every_m_minutes():
    now = [0.0]
    schedule = SaveSchedule([5, 7], every=3, clock=lambda: now[0])
    assert [step for step in range(1, 8) if schedule.due(step)] == [3, 5, 6, 7]
    timed = SaveSchedule([100], minutes=2.0, clock=lambda: now[0])
    now[0] = 119.0
    assert not timed.due(1)
    now[0] = 120.0
    assert timed.due(2)
    timed.saved()
    now[0] = 200.0
    assert not timed.due(3) and timed.due(100)


def test_a_changed_config_is_refused_or_with_the_workflow_flag_moved_aside(tiny, tmp_path):
    first = parse_config(run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2))
    train(first, tmp_path)
    (tmp_path / "run.yaml").write_text("the workflow's file: not the run's\n")
    before = (tmp_path / "metrics.jsonl").read_text()
    changed = parse_config(run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2,
                                      rollout={"temperature": 0.9}))
    with pytest.raises(ConfigError, match=r"^rollout\.temperature: differs from the config this run started with"):
        train(changed, tmp_path)  # even with done.json there: a finished run of another config is not this run
    operational = parse_config(run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2, save_every=1))
    assert train(operational, tmp_path)["steps"] == 2  # a new save cadence changes nothing computed: no refusal
    train(changed, tmp_path, replace_changed=True)
    (aside,) = (tmp_path / "superseded").iterdir()
    assert (aside / "metrics.jsonl").read_text() == before and (aside / "done.json").exists()
    assert (aside / "checkpoints" / "step-000002").is_dir() and (aside / "state" / "step-000002").is_dir()
    assert steps(tmp_path) == [1, 2] and "resumed from" not in (tmp_path / "train.log").read_text()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["rollout"]["temperature"] == 0.9
    assert (tmp_path / "run.yaml").read_text() == "the workflow's file: not the run's\n"  # not the run's: stays
    assert json.loads((tmp_path / "done.json").read_text())["steps"] == 2


def test_a_run_whose_set_up_failed_starts_over_once_the_value_is_corrected(tiny, tmp_path):
    """A wrong data.n_prompts stops the run at set-up (its config.yaml written); corrected, the workflow's rerun moves
    the failed attempt aside instead of refusing the folder."""
    wrong = parse_config({**run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2),
                          "data": {"train": str(tiny["train"]), "n_prompts": 255}})
    with pytest.raises(ConfigError, match=r"^data\.n_prompts: 255, but .* holds 256 records"):
        train(wrong, tmp_path)
    assert (tmp_path / "config.yaml").exists() and not (tmp_path / "metrics.jsonl").exists()
    fixed = parse_config({**run_config(tiny, method="grpo", total_steps=2, checkpoint_every=2),
                          "data": {"train": str(tiny["train"]), "n_prompts": 256}})
    assert train(fixed, tmp_path, replace_changed=True)["steps"] == 2
    (aside,) = (tmp_path / "superseded").iterdir()
    assert yaml.safe_load((aside / "config.yaml").read_text())["data"]["n_prompts"] == 255
    assert steps(tmp_path) == [1, 2]
