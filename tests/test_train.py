"""The trainer end to end on CPU: the tiny warm-started policy on the synthetic task.

- every registered method runs a short training run to completion, with loadable checkpoints;
- two gloo processes (DDP, and DeepSpeed ZeRO-2, each from an accelerate config file) make the one-process first
  update;
- a run killed with SIGKILL at a random step (one process; and two under DeepSpeed) and resumed ends with the
  weights and metrics of an uninterrupted run;
- GRPO and ConSPO raise the tiny benchmark accuracy over the warm-started base by more than 3 paired standard errors
  in 30 steps.
"""

import functools
import json
import math
import os
import random
import signal
import statistics
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
from conspo.objective import available_objectives, build_objective
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
        "rollout": {"group_size": 4, "max_new_tokens": 40, "max_prompt_tokens": 96, "prompts_per_generation": 2,
                    **rollout},
        "train": {"prompts_per_step": 4, "total_steps": 1, "lr": 1e-3,
                  "checkpoint_every": 1, **train_overrides},
        "verifier": {"workers": 1},
    }


# tiny prompts are 79-88 tokens, responses at most 40: rows of about 120 tokens, a few per micro-batch
SMALL_MICRO_BATCHES = {"max_tokens_per_micro_batch": 512}


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


@pytest.mark.parametrize("method", ["grpo", "conspo"])
def test_on_policy_steps_skip_the_old_logprob_pass_with_the_same_result(tiny, tmp_path, monkeypatch, method):
    """With one optimizer step per batch, GRPO (any micro-batching) and ConSPO (rank batch = one micro-batch) take
    their old log-probs and, for ConSPO, the scores for the group coefficients from the gradient pass; giving the
    objective a (no-op) prepare hook forces the separate no-grad pass: both runs must make the same updates."""
    objective = type(build_objective(method))

    def run(out):
        train(parse_config(run_config(tiny, method=method, total_steps=2)), out)  # 16 rows: one micro-batch
        return metrics(out), final_weights(out)

    skipped, skipped_weights = run(tmp_path / "skipped")
    monkeypatch.setattr(objective, "prepare", lambda self, batch, context: batch)
    full, full_weights = run(tmp_path / "full")
    assert any(r["grad_norm"] > 0 and r["degenerate_groups"] < 1 for r in skipped)  # the updates are not empty
    for a, b in zip(skipped, full, strict=True):
        for key in ("reward", "loss", "entropy", "grad_norm", "clip_frac_low", "clip_frac_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert all(torch.allclose(skipped_weights[k], full_weights[k], atol=1e-6) for k in full_weights)
    if method == "conspo":  # the separate pass gives the coefficients first: the degenerate groups' rows are skipped
        assert [r["objective/skipped_rows"] for r in full] == pytest.approx([r["degenerate_groups"] for r in full])


def test_ppo_mini_batches_dynamic_sampling_and_overlong_shaping(tiny, tmp_path):
    cfg = parse_config(run_config(tiny, method="dapo", total_steps=2, mini_batches_per_step=2, ppo_epochs=2,
                                  **SMALL_MICRO_BATCHES, lr=1e-2, lr_schedule="cosine", warmup_steps=1) | {
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
    # DS_ACCELERATOR: DeepSpeed's CPU accelerator, for the runs launched under DeepSpeed (ignored by the others)
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


# Two-process layouts, each chosen by an accelerate config file only (the trainer's code is the same).
# `accelerate launch --cpu` starts one process without mpirun; these use the torchrun-based launcher.
LAYOUTS = {"MULTI_CPU": "cpu_2proc.yaml", "DEEPSPEED": "deepspeed_cpu_2proc.yaml"}  # DDP over gloo; ZeRO-2


def accelerate_launcher(layout):
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
            str(REPO / "config" / "accelerate" / LAYOUTS[layout])]


def assert_same_run(resumed, straight, steps):
    """The resumed run's metrics (timings aside) and final weights equal the uninterrupted run's."""
    a, b = metrics(resumed), metrics(straight)
    assert [r["step"] for r in a] == list(range(1, steps + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in TIMING_KEYS:
            ra.pop(key), rb.pop(key)
        assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)
    wa, wb = final_weights(resumed), final_weights(straight)
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


@pytest.mark.parametrize("method", ["conspo", "grpo"])
def test_two_gloo_processes_make_the_one_process_first_update(tiny, tmp_path, method):
    """Two gloo processes, under DDP and under DeepSpeed ZeRO-2, make the one-process first update: the scores
    all-gathered for ConSPO's group coefficients, the gradient averaging and DeepSpeed's accumulation boundary."""
    # Adam's first step is ~lr * sign(g) for |g| >> eps: a gradient entry within float noise of 0 would move by a
    # visible, noise-decided fraction of lr (seen: 17% of the update in one CI run). With eps = 1e-3 entries that
    # small move linearly in g, so the weights compare the gradients themselves.
    raw = run_config(tiny, method=method, total_steps=1, prompts_per_step=4, adam_eps=1e-3,
                     **SMALL_MICRO_BATCHES, rollout={"group_size": 8})  # 4+ per rank
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    one = subprocess.run(cli(config_path, tmp_path / "one", [sys.executable]), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    (m1,) = metrics(tmp_path / "one")
    assert m1["rollouts"] == 32 and m1["degenerate_groups"] < 1.0, "no informative group: the comparison is vacuous"
    base = load_file(tiny["model"] / "model.safetensors")
    w1 = final_weights(tmp_path / "one")
    moved = max(float((w1[k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-4
    for layout in LAYOUTS:
        out = tmp_path / layout
        two = subprocess.run(cli(config_path, out, accelerate_launcher(layout)), env=env(), cwd=REPO,
                             capture_output=True, text=True, timeout=900)
        assert two.returncode == 0, two.stderr[-3000:]
        assert f"2 process(es), {layout}" in (out / "train.log").read_text()
        (m2,) = metrics(out)
        assert m2["rollouts"] == 32 and m2["reward"] == m1["reward"]
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5, abs=1e-7), layout
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-7), layout
        w2 = final_weights(out)
        difference = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
        print(f"{method}: update size {moved:.3g}, one process vs two under {layout}: max |difference| "
              f"{difference:.3g}")
        assert difference < 1e-3 * moved, layout


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

    assert_same_run(killed, tmp_path / "straight", steps)
    assert not list((killed / "checkpoints").glob("*.tmp"))


def test_a_deepspeed_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tiny, tmp_path):
    """Two ZeRO-2 processes killed with SIGKILL (the launcher and every worker) once step 2's resumable state is complete;
    the relaunch resumes from DeepSpeed's saved state and ends with the uninterrupted run's weights and metrics."""
    import psutil  # a DeepSpeed dependency

    steps = 6
    raw = run_config(tiny, method="conspo", total_steps=steps, prompts_per_step=4, **SMALL_MICRO_BATCHES,
                     rollout={"group_size": 8})
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    launcher = accelerate_launcher("DEEPSPEED")
    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(config_path, killed, launcher), env=env(), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None and not (killed / "state" / "step-000002").is_dir():
        time.sleep(0.05)
    for part in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
        part.kill()  # torchrun's workers do not share the launcher's process group
    process.wait()
    assert not (killed / "done.json").exists(), "the kill landed after the run had finished"

    resumed = subprocess.run(cli(config_path, killed, launcher), env=env(), cwd=REPO, capture_output=True,
                             text=True, timeout=900)
    # the first worker's traceback, not the launcher's summary, says why a multi-process run failed
    assert resumed.returncode == 0, "\n".join(line for line in resumed.stderr.splitlines() if "rank" in line)[-6000:]
    assert "resumed from" in (killed / "train.log").read_text()
    straight = subprocess.run(cli(config_path, tmp_path / "straight", launcher), env=env(), cwd=REPO,
                              capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert any(r["grad_norm"] > 0 for r in metrics(killed))  # the runs make updates
    assert_same_run(killed, tmp_path / "straight", steps)


# ------------------------------------------------------------------------------------------------ learning


LEARNING_LR = 1e-4  # 2e-4 boxes every answer within 30 steps but starts to cost ConSPO arithmetic (docs/training.md)


def per_problem_accuracy(model_path, problems, samples=8):
    """Each problem's share of correct answers among `samples` draws at the tiny benchmarks' evaluation setting
    (temperature 0.6, top-p 0.95, boxed extraction)."""
    model, tokenizer = load_policy(model_path)
    engine = make_engine("transformers", None, model=model, tokenizer=tokenizer, batch_size=256)
    groups = engine.generate([format_prompt(p["problem"]) for p in problems], n=samples, temperature=0.6, top_p=0.95,
                             max_new_tokens=40, seed=0)
    with Verifier(workers=1) as verifier:
        verdicts = verifier.verify([c.text for g in groups for c in g],
                                   [p["answer"] for p in problems for _ in range(samples)])
    return [sum(v.correct for v in verdicts[i * samples:(i + 1) * samples]) / samples for i in range(len(problems))]


def held_out_problems():
    """Every MATH500-stand-in problem that is not a training prompt of the `tiny` fixture (420 of 675)."""
    seen = {r["problem"] for r in make_tasks("math500", 256, seed=1)}
    return [p for p in make_tasks("math500", 675, seed=3) if p["problem"] not in seen]


@functools.cache
def base_accuracy(model_path: str) -> list[float]:
    """The warm-started base's per-problem accuracy, measured once for both methods."""
    return per_problem_accuracy(Path(model_path), held_out_problems())


def learning_run(tiny, out, method, steps, lr):
    cfg = parse_config(run_config(tiny, method=method, total_steps=steps, prompts_per_step=16,
                                  lr=lr, checkpoint_every=steps, rollout={"group_size": 8, "max_new_tokens": 40,
                                                                          "prompts_per_generation": 16}))
    train(cfg, out)
    return out / "checkpoints" / f"step-{steps:06d}"


@pytest.mark.slow  # the default suite shows the same gain through the whole pipeline: tests/test_tiny_dag.py, Table 1
@pytest.mark.parametrize("method", ["grpo", "conspo"])
def test_training_raises_accuracy_well_beyond_its_standard_error(tiny, tmp_path, method):
    """30 steps of 16 prompts x 8 rollouts raise the accuracy on every held-out problem of the training kind (the
    MATH500 stand-in), at the benchmarks' evaluation setting, by more than 3 standard errors of the paired
    difference (the same problems before and after)."""
    problems = held_out_problems()
    before = base_accuracy(str(tiny["model"]))
    after = per_problem_accuracy(learning_run(tiny, tmp_path / method, method, steps=30, lr=LEARNING_LR), problems)
    gains = [b - a for a, b in zip(before, after)]
    gain, se = statistics.fmean(gains), statistics.stdev(gains) / math.sqrt(len(gains))
    print(f"{method}: accuracy {statistics.fmean(before):.3f} -> {statistics.fmean(after):.3f} on {len(problems)} "
          f"problems, gain {gain:.3f} ± {se:.3f} (z = {gain / se:.1f})")
    assert gain > 3 * se
