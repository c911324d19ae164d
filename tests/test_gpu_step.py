"""benchmarks/gpu_step.py, the prepared GPU check, runs its training step at a tiny scale on CPU (`--tiny`)."""

from __future__ import annotations

import json

from benchmarks.gpu_step import main


def test_gpu_step_runs_at_a_tiny_scale_on_cpu(tmp_path):
    assert main(["--tiny", "--json", str(tmp_path / "figures.json")]) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu" and figures["micro_batches"] == 2  # 8 rows of 64 tokens, 4 per micro-batch
    assert figures["tokens_per_s"] > 0
    assert 0 < figures["planned_micro_batch_gib"] < figures["planned_update_without_runtime_gib"]
