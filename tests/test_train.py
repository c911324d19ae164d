"""The trainer end to end on CPU: the tiny warm-started policy on the synthetic task.

- every registered method runs a short training run to completion, with loadable checkpoints;
- two gloo processes (`accelerate launch --cpu --num_processes 2`) make the same first update as one process;
- a run killed with SIGKILL at a random step and resumed ends with the weights and metrics of an uninterrupted run;
- GRPO and ConSPO raise the tiny benchmark accuracy over the warm-started base (both the 8-step and the 30-step
  checks are marked slow until calibrated).
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conspo.data import format_prompt, write_jsonl
from conspo.generation import make_engine
from conftest_models import tiny_model_path  # noqa: F401  (session fixture)
from conspo.models import load_policy
from conspo.objective import available_objectives
from conspo.runconfig import parse_config
from conspo.synthetic import make_tasks
from conspo.train import TIMING_KEYS, train
from conspo.verifier import Verifier

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny(tiny_model_path, tmp_path_factory):
    """The shared warm-started tiny policy (conftest_models) and a synthetic training set."""
    root = tmp_path_factory.mktemp("train-data")
    # the easiest synthetic kind: the tiny policy solves some of these, so groups carry signal
    write_jsonl(root / "train.jsonl", make_tasks("math500", 256, seed=1))
    return {"model": tiny_model_path, "train": root / "train.jsonl"}


def run_config(tiny, **train_overrides):
    rollout = train_overrides.pop("rollout", {})
    method = train_overrides.pop("method", "conspo")
    return {
        "name": "test", "seed": 0,
        "model": {"path": str(tiny["model"])},
        "data": {"train": str(tiny["train"])},
        "method": {"name": method},
        "rollout": {"group_size": 4, "max_new_tokens": 40, "prompts_per_generation": 2, **rollout},
        "train": {"prompts_per_step": 4, "micro_batch_size": 8, "total_steps": 1, "lr": 1e-3,
                  "checkpoint_every": 1, **train_overrides},
        "verifier": {"workers": 1},
    }


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_weights(out):
    done = json.loads((Path(out) / "done.json").read_text())
    return load_file(Path(out) / done["final_checkpoint"] / "model.safetensors")


@pytest.mark.parametrize("method", available_objectives())
def test_each_method_completes_a_short_run(tiny, tmp_path, method):
    cfg = parse_config(run_config(tiny, method=method, total_steps=1))
    train(cfg, tmp_path)
    (record,) = metrics(tmp_path)
    assert record["step"] == 1 and record["rollouts"] == 16
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    assert 0.0 <= record["pass_rate"] <= 1.0 and record["entropy"] > 0
    model, _ = load_policy(tmp_path / "checkpoints" / "step-000001")  # what the evaluation engine loads
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["method"]["name"] == method
    assert json.loads((tmp_path / "done.json").read_text())["steps"] == 1
    assert (tmp_path / "train.log").read_text().count("step 1/1") == 1


def test_on_policy_linear_objectives_skip_the_old_logprob_pass_with_the_same_result(tiny, tmp_path, monkeypatch):
    """GRPO with one optimizer step per batch takes its old log-probs from the gradient pass; giving it a (no-op)
    prepare hook forces the separate no-grad pass: both runs must make the same updates and metrics."""
    from baselines.grpo import GRPO

    def run(out):
        train(parse_config(run_config(tiny, method="grpo", total_steps=2, rollout={"max_new_tokens": 40})), out)
        return metrics(out), final_weights(out)

    skipped, skipped_weights = run(tmp_path / "skipped")
    monkeypatch.setattr(GRPO, "prepare", lambda self, batch, context: batch)
    full, full_weights = run(tmp_path / "full")
    assert any(r["grad_norm"] > 0 and r["degenerate_groups"] < 1 for r in skipped)  # the updates are not empty
    for a, b in zip(skipped, full):
        for key in ("reward", "loss", "entropy", "grad_norm", "clip_frac_low", "clip_frac_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert all(torch.allclose(skipped_weights[k], full_weights[k], atol=1e-6) for k in full_weights)


def test_ppo_mini_batches_dynamic_sampling_and_overlong_shaping(tiny, tmp_path):
    cfg = parse_config(run_config(tiny, method="dapo", total_steps=2, mini_batches_per_step=2, ppo_epochs=2,
                                  micro_batch_size=4, lr=1e-2, lr_schedule="cosine", warmup_steps=1,
                                  rollout={"max_new_tokens": 40}) | {
        "dynamic_sampling": {"enabled": True, "max_rounds": 2},
        "overlong_shaping": {"enabled": True, "buffer": 4, "penalty": 1.0}})
    train(cfg, tmp_path)
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["dynamic_sampling/rounds"] in (1.0, 2.0) for r in records)
    # after the first of 4 optimizer steps the policy has moved: later mini-batches are off-policy
    assert any(r["clip_frac_low"] + r["clip_frac_high"] > 0 for r in records)
    assert records[-1]["lr"] < 1e-2  # cosine decay


def test_rerunning_a_finished_run_does_nothing_and_a_changed_config_is_refused(tiny, tmp_path):
    cfg = parse_config(run_config(tiny))
    train(cfg, tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    train(cfg, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    (tmp_path / "done.json").unlink()
    changed = parse_config(run_config(tiny, lr=5e-4))
    with pytest.raises(ValueError, match=r"^train\.lr"):
        train(changed, tmp_path)


# ------------------------------------------------------------------------------------------------ subprocesses


def cli(config_path, out, launcher=()):
    return [*launcher, "-m", "conspo.cli", "train", "--config", str(config_path), "--out", str(out)]


def env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("method", ["conspo", "grpo"])
def test_two_gloo_processes_make_the_one_process_first_update(tiny, tmp_path, method):
    # Adam's first step is ~lr * sign(g) for |g| >> eps: a gradient entry within float noise of 0 would move by a
    # visible, noise-decided fraction of lr (seen: 17% of the update in one CI run). With eps = 1e-3 entries that
    # small move linearly in g, so the weights compare the gradients themselves.
    raw = run_config(tiny, method=method, total_steps=1, prompts_per_step=4, micro_batch_size=4, adam_eps=1e-3)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    # `accelerate launch --cpu` starts one process without mpirun; the torchrun launcher + cpu=True gives 2 gloo ranks
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                  str(REPO / "config" / "accelerate" / "cpu_2proc.yaml")]
    two = subprocess.run(cli(config_path, tmp_path / "two", [*accelerate]), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(cli(config_path, tmp_path / "one", [sys.executable]), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "2 process(es)" in (tmp_path / "two" / "train.log").read_text()
    (m1,), (m2,) = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert m1["rollouts"] == m2["rollouts"] == 16 and m1["reward"] == m2["reward"]
    assert m1["degenerate_groups"] < 1.0, "no informative group: the comparison would be vacuous"
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5, abs=1e-7)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-7)
    base = load_file(tiny["model"] / "model.safetensors")
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    moved = max(float((w1[k] - base[k]).abs().max()) for k in base)
    difference = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"{method}: update size {moved:.3g}, one vs two processes max |difference| {difference:.3g}")
    assert moved > 1e-4 and difference < 1e-3 * moved


def test_kill_at_a_random_step_and_resume_gives_the_uninterrupted_run(tiny, tmp_path):
    steps = 5
    raw = run_config(tiny, method="conspo", total_steps=steps, checkpoint_every=1, mini_batches_per_step=2)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    # On an idle machine a step takes well under a second, so a kill aimed at the last step can land after done.json
    # is written (the process still exiting): such a try did not kill a run, and is made again in a fresh folder.
    for attempt in range(4):
        kill_after = random.Random().randint(1, steps - 1)  # complete steps before the kill
        killed = tmp_path / f"killed-{attempt}"
        process = subprocess.Popen(cli(config_path, killed, [sys.executable]), env=env(), cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        metrics_path = killed / "metrics.jsonl"
        while time.time() < deadline and process.poll() is None:
            if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= kill_after:
                time.sleep(random.Random().uniform(0.0, 0.5))  # anywhere inside the checkpoint or the next step
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # a no-op if the run already ended (then done.json says so below)
        process.wait()
        if not (killed / "done.json").exists():
            break
    assert not (killed / "done.json").exists(), "every kill landed after the run had finished"

    resumed = subprocess.run(cli(config_path, killed, [sys.executable]), env=env(), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (killed / "train.log").read_text()
    straight = subprocess.run(cli(config_path, tmp_path / "straight", [sys.executable]), env=env(), cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    a, b = metrics(killed), metrics(tmp_path / "straight")
    assert [r["step"] for r in a] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for key in TIMING_KEYS:
            ra.pop(key), rb.pop(key)
        assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)
    wa, wb = final_weights(killed), final_weights(tmp_path / "straight")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    assert not list((killed / "checkpoints").glob("*.tmp"))


# ------------------------------------------------------------------------------------------------ learning


def accuracy(model_path, problems):
    """Greedy pass@1 on `problems` and its standard error over problems."""
    model, tokenizer = load_policy(model_path)
    engine = make_engine("transformers", None, model=model, tokenizer=tokenizer, batch_size=256)
    groups = engine.generate([format_prompt(p["problem"]) for p in problems], n=1, temperature=0.0, top_p=1.0,
                             max_new_tokens=40, seed=0)
    with Verifier(workers=1) as verifier:
        verdicts = verifier.verify([g[0].text for g in groups], [p["answer"] for p in problems])
    p = sum(v.correct for v in verdicts) / len(verdicts)
    return p, math.sqrt(p * (1 - p) / len(verdicts))


def learning_run(tiny, out, method, steps):
    cfg = parse_config(run_config(tiny, method=method, total_steps=steps, prompts_per_step=16, micro_batch_size=32,
                                  lr=1e-4, checkpoint_every=steps, rollout={"group_size": 8, "max_new_tokens": 40,
                                                                           "prompts_per_generation": 16}))
    train(cfg, out)
    return out / "checkpoints" / f"step-{steps:06d}"


def check_learning(tiny, tmp_path, method, steps, n_problems, z):
    seen = {r["problem"] for r in make_tasks("math500", 256, seed=1)}  # the training prompts
    problems = [p for p in make_tasks("math500", n_problems + 400, seed=3) if p["problem"] not in seen][:n_problems]
    before, se_before = accuracy(tiny["model"], problems)
    after, se_after = accuracy(learning_run(tiny, tmp_path / method, method, steps), problems)
    se = math.sqrt(se_before**2 + se_after**2)
    print(f"{method}: accuracy {before:.3f} ± {se_before:.3f} -> {after:.3f} ± {se_after:.3f} ({steps} steps)")
    assert after - before > z * se


@pytest.mark.slow  # not yet calibrated on the default warm-started policy: move to always-on once it is
@pytest.mark.parametrize("method", ["grpo", "conspo"])
def test_training_raises_accuracy_quick(tiny, tmp_path, method):
    check_learning(tiny, tmp_path, method, steps=8, n_problems=200, z=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "conspo"])
def test_training_raises_accuracy_well_beyond_its_standard_error(tiny, tmp_path, method):
    check_learning(tiny, tmp_path, method, steps=30, n_problems=500, z=4.0)
