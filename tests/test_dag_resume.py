"""A training job killed mid-run under Snakemake picks up where it stopped: the rerun (`--rerun-incomplete`, as the
slurm and local profiles set) starts the job again, and the trainer resumes from its newest checkpoint instead of
step 0. The tiny config, shrunk (a 20-step warm start, 8 training steps, a checkpoint every 2), in a scratch copy."""

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
    config["training"]["train"].update(total_steps=8, checkpoint_every=2)
    return config


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

    # a killed snakemake leaves its lock: the user's next command is --unlock, then the same target again
    unlock = subprocess.run([*command, "--unlock"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-4000:]
    rerun = subprocess.run([*command, "--rerun-incomplete"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and "step-00000" in log.split("resumed from", 1)[1].splitlines()[0]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # every step once: nothing lost, nothing trained twice
    assert json.loads((run_dir / "done.json").read_text())["steps"] == 8
