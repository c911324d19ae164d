"""A job killed mid-run under Snakemake picks up where it stopped: the rerun (`--rerun-incomplete`, as the
slurm and local profiles set) starts the job again; the trainer resumes from its newest checkpoint instead of
step 0, and an evaluation keeps the samples it had drawn and draws only the others. The tiny config, shrunk (a
20-step warm start, 8 training steps of 4 prompts x 4 rollouts, a checkpoint every 2; 32 problems per
benchmark), in a scratch copy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
RUN = "tiny-a--deepscaler-preview--grpo"
TARGET = f"results/runs/{RUN}/done.json"


def shrunk_tiny_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["models"]["tiny-a"]["build"].update(steps=20, train_size=256)
    config["training"]["train"].update(total_steps=8, checkpoint_every=2, prompts_per_step=4,
                                       max_tokens_per_micro_batch=2048)
    config["training"]["rollout"].update(group_size=4)
    return config



def unlock_and_rerun(command: list[str], cwd) -> None:
    """What a user does after a killed snakemake: --unlock (the kill left its lock), then the same target again."""
    unlock = subprocess.run([*command, "--unlock"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-4000:]
    rerun = subprocess.run([*command, "--rerun-incomplete"], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]


def test_a_killed_training_job_resumes_from_its_checkpoint_on_rerun(tmp_path):
    for name in ("Snakefile", "workflow", "config", "slurm", "profiles"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    (tmp_path / "config" / "resume.yaml").write_text(yaml.safe_dump(shrunk_tiny_config(), sort_keys=False))
    command = [SNAKEMAKE, TARGET, "--cores", "1", "--configfile", "config/resume.yaml"]  # --configfile takes 1+
    run_dir = tmp_path / "results" / "runs" / RUN

    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 900
    while not (run_dir / "state" / "step-000002").is_dir():  # the first resumable state
        assert first.poll() is None, "snakemake ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # snakemake and the training job, like a node lost mid-run
    first.wait()
    assert not (run_dir / "done.json").exists(), "the run finished before the kill: nothing to resume"

    unlock_and_rerun(command, tmp_path)
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and "step-00000" in log.split("resumed from", 1)[1].splitlines()[0]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # every step once: nothing lost, nothing trained twice
    assert json.loads((run_dir / "done.json").read_text())["steps"] == 8


EVAL_TARGET = "results/evals/base/tiny-a/AIME24.metrics.json"  # one output of tiny-a's base-model evaluation job
EVAL_DIR = "results/evals/base/tiny-a"


def evaluation_config() -> dict:
    config = shrunk_tiny_config()
    for spec in config["benchmarks"].values():
        spec["prepare"]["n"] = 32
    return config


def test_a_killed_evaluation_job_keeps_its_samples_and_ends_with_the_uninterrupted_metrics(tmp_path):
    """SIGKILL to Snakemake and an evaluation job (all seven benchmarks of tiny-a's base model) once its first
    samples are on disk; --unlock, --rerun-incomplete: the samples already drawn stay, only the others are drawn,
    and every metrics file equals the one of an uninterrupted evaluation in the same folder."""
    for name in ("Snakefile", "workflow", "config", "slurm", "profiles"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    (tmp_path / "config" / "evaluate.yaml").write_text(yaml.safe_dump(evaluation_config(), sort_keys=False))
    command = [SNAKEMAKE, EVAL_TARGET, "--cores", "1", "--configfile", "config/evaluate.yaml"]
    evals = tmp_path / EVAL_DIR
    whole = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-4000:]
    benchmarks = sorted(path.name.split(".")[0] for path in evals.glob("*.metrics.json"))
    assert len(benchmarks) == 7  # one job wrote all seven
    reference = {name: json.loads((evals / f"{name}.metrics.json").read_text()) for name in benchmarks}
    evals.rename(tmp_path / "uninterrupted")

    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while not any(path.stat().st_size for path in evals.glob("*.samples.jsonl")):
        assert first.poll() is None, "snakemake ended before the first samples were written"
        assert time.monotonic() < deadline, "no samples within 10 minutes"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    drawn = {path.name: [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
             for path in evals.glob("*.samples.jsonl")}  # whole lines: the kill may have torn the last one
    assert not (evals / "OlympiadBench.metrics.json").exists(), "the evaluation finished before the kill"

    unlock_and_rerun(command, tmp_path)
    log = (evals / "evaluate.log").read_text()
    kept = sum(len(lines) for lines in drawn.values())
    assert kept > 0 and f"generating {sum(m['k'] * m['n_problems'] for m in reference.values()) - kept} samples" \
        in log  # only the samples not on disk at the kill were drawn again
    for name, lines in drawn.items():
        assert set(lines) <= set((evals / name).read_text().splitlines(keepends=True))  # drawn before it: kept
    assert {name: json.loads((evals / f"{name}.metrics.json").read_text()) for name in benchmarks} == reference
