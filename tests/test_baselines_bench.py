"""The benchmark plumbing: dispatcher, interleaved timing, atomic JSON records, and a tiny objectives run."""

import json

import pytest
import torch

from benchmarks import __main__ as dispatcher
from benchmarks import bench_objectives
from benchmarks.common import time_interleaved, write_record


def test_dispatcher_lists_the_benchmarks_and_refuses_unknown_names(capsys):
    assert dispatcher.main([]) == 0
    assert "objectives" in capsys.readouterr().out
    assert dispatcher.main(["no_such_bench"]) == 2
    assert "unknown benchmark 'no_such_bench'" in capsys.readouterr().err


def test_time_interleaved_counts_warmup_and_repeats():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, repeats=3)
    assert calls == ["a", "b"] * 5  # the entries take turns every round
    assert [(len(t["wall"]), len(t["cpu"])) for t in times.values()] == [(3, 3), (3, 3)]
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({}, repeats=0)


def test_write_record_is_atomic_and_records_the_environment(tmp_path):
    path = write_record("demo", {"value": 1}, directory=tmp_path)
    record = json.loads(path.read_text())
    assert record["benchmark"] == "demo" and record["value"] == 1
    assert {"torch", "threads", "machine"} <= set(record["environment"])
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]  # no temporary file left behind


def test_objectives_benchmark_runs_every_objective_on_a_tiny_batch(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert bench_objectives.main(["--rollouts", "16", "--tokens", "8", "--repeats", "1", "--warmup", "0",
                                  "--micro-batch-size", "5", "--records", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "objectives.json").read_text())
    for name in ["grpo", "dapo", "dr_grpo", "disco", "gmpo", "cispo", "sapo", "conspo", "disco + no-grad pass"]:
        assert record["results"][name]["median_ms"] > 0, name
    assert record["results"]["grpo"]["ratio_to_grpo"] == 1.0
    assert record["results"]["grpo"]["cpu_ratio_to_grpo"] == 1.0
    assert "ConSPO / GRPO" in capsys.readouterr().out
    assert record["environment"]["threads"] == 1 and torch.get_num_threads() == threads  # restored afterwards
