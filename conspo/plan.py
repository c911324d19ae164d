"""What the workflow has to compute, derived from a workflow config (config/paper.yaml, config/tiny.yaml).

The Snakefile imports this module and asks it every planning question; the rules only call `conspo <command>`.

    plan = Plan.from_config(config)        # semantic validation: every error names the config key at fault
                                           # (conspo.workflow_config checks the files and the schema before);
                                           # every GPU training run must fit its GPUs (conspo.memory)
    plan.runs                              # distinct training runs, keyed by their resolved hyperparameters
    plan.checkpoint_steps(run_name)        # the steps whose checkpoints a run writes
    plan.run_benchmarks(run_name)          # the benchmarks each checkpoint of a run is evaluated on
    plan.table_spec("table1")              # the cells of a table: which runs (one per seed) or base model fill each row

Identical runs are one job: a run is identified by (model, training set, objective class, every objective
parameter, every training setting, seed), so e.g. the Figure 2 point M = 0 is the Table 6 row "w/o scheduled
margin" and the default ConSPO run serves Table 1, Table 6 and every Figure 2 panel. A run is named after the first
table row or sweep point that needs it: `{model}--{dataset}--{variant}`, with `--seed{N}` appended for every seed
but the config's `seed`, so adding a seed to `seeds` adds runs and renames none.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import write_json_atomic, write_text_atomic
from .memory import check_plan_memory
from .names import AVERAGE, BASE_MODEL  # noqa: F401  (part of this module's interface)
from .objective import ParameterError, available_objectives, build_objective, objective_parameters, typed_parameters
from .runconfig import ConfigError, checkpoint_steps, parse_config


class PlanError(ValueError):
    """The workflow config is inconsistent; the message starts with the config key at fault."""


def slug(name: str) -> str:
    """A path-safe lower-case name: 'DeepSeek-R1-Distill-Qwen-1.5B' -> 'deepseek-r1-distill-qwen-1.5b'."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def number_slug(value: float) -> str:
    return f"{value:g}"


# the workflow's `evaluation` keys passed on to `conspo evaluate` (each model's `evaluation` overrides them)
EVALUATE_OPTIONS = ("temperature", "top_p", "max_new_tokens", "seed", "engine", "extraction", "workers",
                    "verify_timeout", "batch_size", "chunk_sequences", "enforce_eager", "max_model_len", "dtype",
                    "kv_cache_gib")


def command_args(options: dict) -> str:
    """{'train_kind': 'x', 'steps': 3} -> "--steps 3 --train-kind x" (keys sorted, so the command does not depend
    on the config's key order; shell-quoted; true as a bare flag)."""
    args: list[str] = []
    for key, value in sorted(options.items()):
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return shlex.join(args)


def dotted(settings: dict, key: str):
    """settings['a']['b'] for key 'a.b' (KeyError when absent)."""
    value = settings
    for part in key.split("."):
        value = value[part]
    return value


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def sorted_keys(value):
    """`value` with every nested mapping's keys in sorted order: a run config whose text, and so Snakemake's record
    of the rule's params, does not depend on the order keys happen to have in the workflow config."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


def canonical(value):
    """A hashable, order-independent form of nested config values (for run identity)."""
    if isinstance(value, dict):
        return tuple(sorted((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


@dataclass
class Run:
    """One distinct training run."""

    name: str
    model: str
    dataset: str
    objective: str  # registry name used in the run config
    params: dict  # every objective parameter, resolved
    trainer: dict  # rollout/train/dynamic_sampling/overlong_shaping sections (method extras merged in)
    seed: int
    serves: list = field(default_factory=list)  # e.g. ["table1:ConSPO", "figure2:tau=10"]
    method: str = ""  # the method (config key) of the first table row or sweep point that needs the run


class Plan:
    def __init__(self, config: dict, *, check_memory: bool = True):
        self.config = config
        self.results = config["results"]
        self.models: dict = config["models"]
        self.datasets: dict = config["datasets"]
        self.benchmarks: dict = config["benchmarks"]
        self.methods: dict = config["methods"]
        self.tables: dict = config["tables"]
        self.figures: dict = config.get("figures") or {}
        self.seeds: list[int] = list(config.get("seeds") or [config["seed"]])
        self.validation: str | None = config.get("selection", {}).get("validation")
        self.runs: dict[str, Run] = {}
        self._run_by_key: dict = {}
        self._benchmarks_of_run: dict[str, list[str]] = {}
        self._cells: dict[str, list[dict]] = {}
        self._sweeps: dict[str, list[dict]] = {}
        self._known: dict = {}  # (section, name) -> normalised problems known at parse time (_problems)
        self._check_references()
        self._check_models()
        self._check_data()
        self._check_overlap()
        self._check_methods()
        self._plan_tables()
        self._plan_figures()
        self._check_run_configs()
        if check_memory:  # every GPU training run must fit the GPU memory its resources name (conspo.memory)
            check_plan_memory(self)

    @classmethod
    def from_config(cls, config: dict) -> "Plan":
        return cls(config)

    # ------------------------------------------------------------------------------------------ validation
    def _need(self, key: str, name: str, known: dict, what: str) -> None:
        if name not in known:
            raise PlanError(f"{key}: unknown {what} {name!r}; known: {', '.join(known)}")

    def _check_references(self) -> None:
        from .data import DATASETS

        for section in ("datasets", "benchmarks"):
            for name, spec in self.config[section].items():
                if spec["prepare"]["dataset"] not in DATASETS:
                    raise PlanError(f"{section}.{name}.prepare.dataset: unknown dataset {spec['prepare']['dataset']!r};"
                                    f" known: {', '.join(DATASETS)}")
        for model, spec in self.models.items():
            accelerate_config = spec["resources"]["train"].get("accelerate_config")
            if accelerate_config and not Path(accelerate_config).is_file():
                raise PlanError(f"models.{model}.resources.train.accelerate_config: no file {accelerate_config!r} "
                                "(paths are relative to the repository root)")
        for bench, spec in self.benchmarks.items():
            if spec["metric"].startswith("avg@") and int(spec["metric"][4:]) != spec["samples"]:
                raise PlanError(f"benchmarks.{bench}.samples: {spec['metric']} needs {spec['metric'][4:]} samples "
                                f"per problem, got {spec['samples']}")
        registered = available_objectives()
        for method, spec in self.methods.items():
            if spec["objective"] not in registered:
                raise PlanError(f"methods.{method}.objective: unknown objective {spec['objective']!r}; "
                                f"registered: {', '.join(registered)}")
            known = objective_parameters(spec["objective"])
            for param in spec.get("params", {}):
                if param not in known:
                    raise PlanError(f"methods.{method}.params.{param}: objective {spec['objective']!r} has no "
                                    f"parameter {param!r}; its parameters: {', '.join(known)}")
        for method, spec in self.methods.items():
            for param, setting in spec.get("link", {}).items():
                if param not in objective_parameters(spec["objective"]):
                    raise PlanError(f"methods.{method}.link.{param}: objective {spec['objective']!r} has no "
                                    f"parameter {param!r}")
                for model in self.models:
                    try:
                        dotted(self.trainer_settings(model, method), setting)
                    except KeyError:
                        raise PlanError(f"methods.{method}.link.{param}: no training setting {setting!r} "
                                        f"(model {model!r})") from None
        for table, spec in self.tables.items():
            for i, block in enumerate(spec["blocks"]):
                self._need(f"tables.{table}.blocks[{i}].model", block["model"], self.models, "model")
                self._need(f"tables.{table}.blocks[{i}].dataset", block["dataset"], self.datasets, "training set")
            for i, method in enumerate(spec["methods"]):
                self._need(f"tables.{table}.methods[{i}]", method, self.methods, "method (no run defined for it)")
            for i, bench in enumerate(spec["benchmarks"]):
                self._need(f"tables.{table}.benchmarks[{i}]", bench, self.benchmarks, "benchmark")
            reference = spec.get("reference")
            if reference is not None and reference not in spec["methods"]:
                raise PlanError(f"tables.{table}.reference: {reference!r} is not one of the table's methods")
            if self.validation in spec["benchmarks"]:
                raise PlanError(f"selection.validation: {self.validation!r} is a column of tables.{table}; selecting "
                                "checkpoints on it is selecting on the test set (name a benchmark outside the tables)")
        if self.validation is not None:
            self._need("selection.validation", self.validation, self.benchmarks, "benchmark")
        for figure, spec in self.figures.items():
            self._need(f"figures.{figure}.model", spec["model"], self.models, "model")
            self._need(f"figures.{figure}.dataset", spec["dataset"], self.datasets, "training set")
            for i, bench in enumerate(spec.get("benchmarks", [])):
                self._need(f"figures.{figure}.benchmarks[{i}]", bench, self.benchmarks, "benchmark")
            for i, method in enumerate(spec.get("methods", [])):
                self._need(f"figures.{figure}.methods[{i}]", method, self.methods, "method (no run defined for it)")
            if "method" in spec:
                self._need(f"figures.{figure}.method", spec["method"], self.methods, "method (no run defined for it)")
                known = objective_parameters(self.methods[spec["method"]]["objective"])
                for i, sweep in enumerate(spec.get("sweeps", [])):
                    if sweep["param"] not in known:
                        raise PlanError(f"figures.{figure}.sweeps[{i}].param: objective "
                                        f"{self.methods[spec['method']]['objective']!r} has no parameter "
                                        f"{sweep['param']!r}; its parameters: {', '.join(known)}")

    def _check_data(self) -> None:
        """Data preparation: each `prepare` mapping against `conspo prepare-data`'s own options (local files must
        exist), and each training set's n_prompts against what preparation writes (synthetic sources) or has written
        (the prepared file, once there): the steps and checkpoints of every run are planned on it."""
        from .data import check_prepare_options, prepared_size

        for section in ("datasets", "benchmarks"):
            for name, spec in self.config[section].items():
                try:
                    check_prepare_options(spec["prepare"])
                except ValueError as err:
                    raise PlanError(f"{section}.{name}.prepare.{err}") from None
        for name, spec in self.datasets.items():
            found, where = prepared_size(spec["prepare"]), "its synthetic source writes"
            prepared = Path(self.train_data(name))
            if found is None and prepared.is_file():
                with prepared.open(encoding="utf-8") as handle:
                    found, where = sum(1 for line in handle if line.strip()), f"{prepared} holds"
            if found is not None and found != spec["n_prompts"]:
                raise PlanError(f"datasets.{name}.n_prompts: {spec['n_prompts']}, but {where} {found} prompts "
                                "(n_prompts fixes every run's steps and checkpoints)")

    def _check_models(self) -> None:
        """A local model (`source: local`) is used where it is: its folder must hold a config, safetensors weights
        and a tokenizer before any job runs."""
        for model, spec in self.models.items():
            if spec["source"] == "local":
                problem = model_folder_problem(spec["path"])
                if problem is not None:
                    raise PlanError(f"models.{model}.path: {problem} (a folder with config.json, *.safetensors "
                                    "weights and the tokenizer's files; relative paths start at the repository root)")

    def _problems(self, section: str, name: str, prepared_files: bool = True) -> set[str] | None:
        """The normalised problem texts of a training set or benchmark when known at parse time: a synthetic source
        (generated now, cheaply) or, with `prepared_files`, a file already prepared; None otherwise."""
        from .data import load_records, normalised_problem, read_jsonl

        if (section, name) not in self._known:
            spec = self.config[section][name]
            prepared = Path(self.train_data(name) if section == "datasets" else self.benchmark_data(name))
            records = None
            if spec["prepare"]["source"] == "synthetic" and not spec.get("exclude_benchmarks", False):
                options = {k: v for k, v in spec["prepare"].items() if k not in ("dataset", "source")}
                records = load_records(spec["prepare"]["dataset"], "synthetic", **options)
            elif prepared.is_file():
                records = read_jsonl(prepared)
            self._known[(section, name)] = (None if records is None else {normalised_problem(r["problem"])
                                                                          for r in records}, records is not None
                                            and spec["prepare"]["source"] != "synthetic")
        problems, from_file = self._known[(section, name)]
        return None if from_file and not prepared_files else problems

    def _check_overlap(self) -> None:
        """Refuse a table whose training set shares problems with one of its benchmarks (training on test problems
        inflates every trained row), unless the training set excludes the evaluated benchmarks
        (`exclude_benchmarks`) or the table says the overlap is meant (`allow_overlap`). Shared problems are found
        from the records' index ranges (the same source sliced twice, e.g. MATH500 from PyPI) and from the normalised
        problem texts of synthetic sets. Overlap that only files prepared from the Hub show is a warning on every
        parse, not a refusal: the files appear mid-DAG, where a refusal would stop every later cluster job."""
        for table, spec in self.tables.items():
            if spec.get("allow_overlap", False):
                continue
            for i, block in enumerate(spec["blocks"]):
                dataset = block["dataset"]
                if self.datasets[dataset].get("exclude_benchmarks", False):
                    continue
                for bench in spec["benchmarks"]:
                    shared = self._shared_problems(dataset, bench, prepared_files=False)
                    if shared is None and self._shared_problems(dataset, bench) is not None:
                        # only the prepared files show it: refusing now would stop a running DAG (every cluster job
                        # parses the workflow again) after the data was prepared, so it is said on every parse
                        print(f"WARNING tables.{table}.blocks[{i}].dataset: training set {dataset!r} shares "
                              f"{self._shared_problems(dataset, bench)} with the table's benchmark {bench!r} "
                              f"(prepared files); see datasets.{dataset}.exclude_benchmarks", file=sys.stderr)
                    if shared is not None:
                        raise PlanError(f"tables.{table}.blocks[{i}].dataset: training set {dataset!r} shares problems "
                                        f"with the table's benchmark {bench!r} ({shared}); set "
                                        f"datasets.{dataset}.prepare.offset past them or "
                                        f"datasets.{dataset}.exclude_benchmarks: true, or, if meant, "
                                        f"tables.{table}.allow_overlap: true")

    def _shared_problems(self, dataset: str, bench: str, prepared_files: bool = True) -> str | None:
        """How a training set and a benchmark are known to share problems (from their sources' index ranges, from
        synthetic texts, and with `prepared_files` from files already prepared), or None."""
        from .data import record_rows

        train_rows = record_rows(self.datasets[dataset]["prepare"])
        bench_rows = record_rows(self.benchmarks[bench]["prepare"])
        if train_rows and bench_rows and train_rows[0] == bench_rows[0] and ranges_meet(train_rows[1:], bench_rows[1:]):
            return (f"both take records of {train_rows[0][0]} from source {train_rows[0][1]}: "
                    f"{range_text(train_rows[1:])} and {range_text(bench_rows[1:])}")
        train = self._problems("datasets", dataset, prepared_files)
        test = self._problems("benchmarks", bench, prepared_files)
        if train is not None and test is not None and train & test:
            return f"{len(train & test)} problems in common"
        return None

    def _check_methods(self) -> None:
        """Each method's parameters, and each value of a Figure 2 sweep, through the objective's own checks (types
        and ranges), so that a bad value stops the workflow before any job, naming its key."""
        for method, spec in self.methods.items():
            try:
                build_objective(spec["objective"], spec.get("params", {}))
            except ParameterError as err:
                raise PlanError(f"methods.{method}.params.{err}") from None
        for figure, spec in self.figures.items():
            if "method" not in spec:
                continue
            method = self.methods[spec["method"]]
            for i, sweep in enumerate(spec.get("sweeps", [])):
                for j, value in enumerate(sweep["values"]):
                    try:
                        build_objective(method["objective"], {**method.get("params", {}), sweep["param"]: value})
                    except ParameterError as err:
                        raise PlanError(f"figures.{figure}.sweeps[{i}].values[{j}]: {err}") from None

    def _source_key(self, run: Run, key: str) -> str:
        """The workflow-config key that a run-config key (e.g. `rollout.top_p`) of `run` takes its value from: the
        method's trainer extras, else the model's training overrides, else the shared training settings."""
        section, _, rest = key.partition(".")
        if section == "method":
            param = rest.removeprefix("params.").split(".")[0]
            kind = "link" if param in self.methods[run.method].get("link", {}) else "params"
            return f"methods.{run.method}.{kind}.{param}"
        if section == "model":
            return f"models.{run.model}.load.{rest}"
        if section == "data":
            return f"datasets.{run.dataset}"
        if section in ("seed", "name"):
            return key
        plain = re.sub(r"\[\d+\]", "", key)
        for prefix, settings in ((f"methods.{run.method}.trainer", self.methods[run.method].get("trainer", {})),
                                 (f"models.{run.model}.training", self.models[run.model].get("training", {}))):
            try:
                dotted(settings, plain)
                return f"{prefix}.{key}"
            except (KeyError, TypeError):
                continue
        return f"training.{key}"

    # ------------------------------------------------------------------------------------------ runs
    def trainer_settings(self, model: str, method: str) -> dict:
        """rollout/train/... sections of a run: global training defaults < model overrides < method extras."""
        settings = deep_merge(self.config["training"], self.models[model].get("training", {}))
        return deep_merge(settings, self.methods[method].get("trainer", {}))

    def _runs_for(self, model: str, dataset: str, method: str, overrides: dict, variant: str, serves: str,
                  seeds: list[int]) -> list[str]:
        """The run of a table row or sweep point for each seed."""
        return [self._run_for(model, dataset, method, overrides, variant, serves, seed) for seed in seeds]

    def _run_for(self, model: str, dataset: str, method: str, overrides: dict, variant: str, serves: str,
                 seed: int) -> str:
        spec = self.methods[method]
        defaults = objective_parameters(spec["objective"])
        trainer = self.trainer_settings(model, method)
        linked = {param: dotted(trainer, setting) for param, setting in spec.get("link", {}).items()}
        try:  # typed: e.g. an int for a float parameter is a float, so equal values make one run
            params = {**defaults, **typed_parameters(spec["objective"], {**spec.get("params", {}), **linked,
                                                                          **overrides})}
        except ParameterError as err:  # parameters and sweep values were checked: a linked setting's value
            param = str(err).split(":")[0]
            raise PlanError(f"methods.{method}.link.{err} (the value of {spec['link'].get(param)!r}, model "
                            f"{model!r})") from None
        objective_class = type(build_objective(spec["objective"])).__name__
        key = canonical([model, dataset, objective_class, params, trainer, seed])
        name = self._run_by_key.get(key)
        if name is None:
            name = f"{slug(model)}--{slug(dataset)}--{variant}"
            if seed != self.config["seed"]:
                name += f"--seed{seed}"
            if name in self.runs:
                raise PlanError(f"methods: two different runs would both be named {name!r}")
            self.runs[name] = Run(name, model, dataset, spec["objective"], params, trainer, seed, method=method)
            self._run_by_key[key] = name
        self.runs[name].serves.append(serves)
        return name

    def _add_benchmarks(self, run: str, benchmarks: list[str]) -> None:
        have = self._benchmarks_of_run.setdefault(run, [])
        have += [b for b in benchmarks if b not in have]

    def _plan_tables(self) -> None:
        for table, spec in self.tables.items():
            cells = []
            for block in spec["blocks"]:
                model, dataset = block["model"], block["dataset"]
                if spec.get("base_model", False):
                    cells.append({"model": model, "dataset": dataset, "method": BASE_MODEL, "runs": []})
                for method in spec["methods"]:
                    runs = self._runs_for(model, dataset, method, {}, slug(self.methods[method]["objective"]),
                                          f"{table}:{method}", spec.get("seeds") or self.seeds)
                    for run in runs:
                        self._add_benchmarks(run, spec["benchmarks"])
                    cells.append({"model": model, "dataset": dataset, "method": method, "runs": runs})
            self._cells[table] = cells

    def figure_benchmarks(self, figure: str) -> list[str]:
        """A figure's benchmarks: its own list, or every benchmark but the validation benchmark of selection."""
        return self.figures[figure].get("benchmarks") or [b for b in self.benchmarks if b != self.validation]

    def _plan_figures(self) -> None:
        for figure, spec in self.figures.items():
            model, dataset = spec["model"], spec["dataset"]
            benchmarks = self.figure_benchmarks(figure)
            seeds = spec.get("seeds") or self.seeds
            points = []
            for method in spec.get("methods", []):
                runs = self._runs_for(model, dataset, method, {}, slug(self.methods[method]["objective"]),
                                      f"{figure}:{method}", seeds)
                points.append({"method": method, "runs": runs})
            for sweep in spec.get("sweeps", []):
                for value in sweep["values"]:
                    variant = f"{slug(self.methods[spec['method']]['objective'])}-{sweep['name']}{number_slug(value)}"
                    runs = self._runs_for(model, dataset, spec["method"], {sweep["param"]: value}, variant,
                                          f"{figure}:{sweep['name']}={value:g}", seeds)
                    points.append({"sweep": sweep["name"], "label": sweep["label"], "param": sweep["param"],
                                   "value": value, "runs": runs})
            for point in points:
                for run in point["runs"]:
                    self._add_benchmarks(run, benchmarks)
            self._sweeps[figure] = points

    def _check_run_configs(self) -> None:
        """Every run config through conspo.runconfig's checks; an error names the workflow-config key at fault."""
        for name, run in self.runs.items():
            try:
                parse_config(self.run_config(name), check_paths=False)
            except ConfigError as err:
                key, _, message = str(err).partition(": ")
                raise PlanError(f"{self._source_key(run, key)}: {message} (run {name})") from None

    # ------------------------------------------------------------------------------------------ paths
    def model_dir(self, model: str) -> str:
        """The model's folder: a local model's own (used in place), else where preparation writes it."""
        spec = self.models[model]
        return spec["path"] if spec["source"] == "local" else f"{self.results}/models/{slug(model)}"

    def train_data(self, dataset: str) -> str:
        return f"{self.results}/data/train/{slug(dataset)}.jsonl"

    def benchmark_data(self, benchmark: str) -> str:
        return f"{self.results}/data/benchmarks/{benchmark}.jsonl"

    def run_dir(self, run: str) -> str:
        return f"{self.results}/runs/{run}"

    def eval_metrics(self, run: str, step: int, benchmark: str) -> str:
        return f"{self.results}/evals/{run}/step-{step:06d}/{benchmark}.metrics.json"

    def base_metrics(self, model: str, benchmark: str) -> str:
        return f"{self.results}/evals/base/{slug(model)}/{benchmark}.metrics.json"

    def selection(self, run: str) -> str:
        return f"{self.results}/selected/{run}.json"

    def evaluated_benchmarks(self) -> list[str]:
        """Every benchmark some job evaluates (a run's checkpoints, a base model, checkpoint selection)."""
        wanted = {b for run in self.runs for b in self.run_benchmarks(run)}
        wanted |= {b for model in self.models for b in self.base_benchmarks(model)}
        return [b for b in self.benchmarks if b in wanted]

    def excluded_benchmarks(self, dataset: str) -> list[str]:
        """The prepared benchmark files whose problems a training set leaves out (`exclude_benchmarks`)."""
        if not self.datasets[dataset].get("exclude_benchmarks", False):
            return []
        return [self.benchmark_data(b) for b in self.evaluated_benchmarks()]

    def validation_check(self, run: str) -> list[str]:
        """The record that the validation benchmark shares no problem with a run's training set (none when the
        config names no validation benchmark)."""
        if self.validation is None:
            return []
        return [f"{self.results}/data/validation/{slug(self.runs[run].dataset)}.json"]

    def table_prefix(self, table: str) -> str:
        return f"{self.results}/tables/{table}/{table}"

    # ------------------------------------------------------------------------------------------ questions
    def model_command(self, model: str) -> str:
        """How a model folder comes to be: a Hub download (files already there are kept), a tiny model built and
        warm-started, or SmolLM2 converted (a finished conversion is kept). A local model needs no job."""
        spec, out = self.models[model], shlex.quote(self.model_dir(model))
        if spec["source"] == "local":
            raise ValueError(f"models.{model}: a local model is used in place, it is not prepared")
        if spec["source"] == "hub":
            return f"hf download {shlex.quote(spec['id'])} --local-dir {out}"
        if spec["source"] == "tiny":
            return f"conspo build-tiny-model --out {out} {command_args(spec['build'])}"
        return f"conspo convert-smollm2 --out {out}"

    def evaluate_options(self, model: str, benchmarks: list[str]) -> str:
        """Options of one `conspo evaluate` job of `model` (a checkpoint or the base model) on `benchmarks`: the
        model's evaluation settings, then each benchmark's data file and samples per problem."""
        s = self.evaluation_settings(model)
        shared = command_args({key: s[key] for key in EVALUATE_OPTIONS})
        return " ".join([shared] + [shlex.join(["--benchmark", b, "--data", self.benchmark_data(b), "--samples",
                                                str(self.benchmarks[b]["samples"])]) for b in benchmarks])

    def model_of_slug(self, model_slug: str) -> str:
        return next(m for m in self.models if slug(m) == model_slug)

    def dataset_of_slug(self, dataset_slug: str) -> str:
        return next(d for d in self.datasets if slug(d) == dataset_slug)

    def run_config(self, run_name: str) -> dict:
        """The RUN CONFIG of docs/design.md for one run, keys sorted (reordering the workflow config changes
        nothing, so reruns nothing)."""
        run = self.runs[run_name]
        model = self.models[run.model]
        config = {
            "name": run.name,
            "seed": run.seed,
            "model": {"path": self.model_dir(run.model), **model.get("load", {})},
            "data": {"train": self.train_data(run.dataset), "n_prompts": self.n_prompts(run.dataset)},
            "method": {"name": run.objective, "params": dict(run.params)},
        }
        return sorted_keys({**config, **copy.deepcopy(run.trainer)})

    def n_prompts(self, dataset: str) -> int:
        return int(self.datasets[dataset]["n_prompts"])

    def checkpoint_steps(self, run_name: str) -> list[int]:
        cfg = parse_config(self.run_config(run_name), check_paths=False)
        return checkpoint_steps(cfg, self.n_prompts(self.runs[run_name].dataset))

    def run_benchmarks(self, run_name: str) -> list[str]:
        """Benchmarks a run's checkpoints are evaluated on: the union over the tables and figures it serves, and
        the validation benchmark of checkpoint selection (`selection.validation`)."""
        wanted = self._benchmarks_of_run[run_name] + [self.validation]
        return [b for b in self.benchmarks if b in wanted]

    def base_benchmarks(self, model: str) -> list[str]:
        wanted = {b for table, spec in self.tables.items() if spec.get("base_model", False)
                  for block in spec["blocks"] if block["model"] == model for b in spec["benchmarks"]}
        return [b for b in self.benchmarks if b in wanted]

    def evaluation_settings(self, model: str) -> dict:
        """Settings of `conspo evaluate` for one model (e.g. its max response length); samples are per benchmark."""
        return deep_merge(self.config["evaluation"], self.models[model].get("evaluation", {}))

    def evaluations(self) -> list[str]:
        """Every checkpoint x benchmark metrics file."""
        return [path for run in self.runs for path in self.run_evaluations(run)]

    def base_evaluations(self) -> list[str]:
        return [self.base_metrics(model, bench) for model in self.models for bench in self.base_benchmarks(model)]

    def run_evaluations(self, run_name: str) -> list[str]:
        return [self.eval_metrics(run_name, step, bench) for step in self.checkpoint_steps(run_name)
                for bench in self.run_benchmarks(run_name)]

    def evaluation_jobs(self) -> list[str]:
        """One evaluation job per checkpoint and per base model shown in a table (its output folder): the job
        loads its engine once and evaluates every benchmark that checkpoint or model is needed for."""
        return ([f"{self.results}/evals/{run}/step-{step:06d}" for run in self.runs
                 for step in self.checkpoint_steps(run)]
                + [f"{self.results}/evals/base/{slug(model)}" for model in self.models if self.base_benchmarks(model)])

    def evaluation_rules(self) -> list[dict]:
        """The evaluation rules the workflow defines: one per kind ("checkpoint" or "base") and distinct list of
        benchmarks (a rule's outputs are fixed, one metrics file per benchmark), with the runs (or model slugs) whose
        jobs it runs; checkpoint rules first, each kind's rule with the most members first (the config's key order
        changes nothing)."""
        rules: dict[tuple, list[str]] = {}
        for run in self.runs:
            rules.setdefault(("checkpoint", tuple(self.run_benchmarks(run))), []).append(run)
        for model in self.models:
            if self.base_benchmarks(model):
                rules.setdefault(("base", tuple(self.base_benchmarks(model))), []).append(slug(model))
        ordered = sorted(rules.items(), key=lambda item: (item[0][0] != "checkpoint", -len(item[1]), item[0][1]))
        return [{"kind": kind, "benchmarks": list(benchmarks), "members": sorted(members)}
                for (kind, benchmarks), members in ordered]

    def cells(self, table: str) -> list[dict]:
        return [dict(cell) for cell in self._cells[table]]

    def table_spec(self, table: str) -> dict:
        """Everything `conspo tables aggregate` needs for one table: rows, columns and the files filling them."""
        spec = self.tables[table]
        cells = []
        for cell in self._cells[table]:
            cell = dict(cell, seeds=[self.runs[run].seed for run in cell["runs"]],
                        selections=[self.selection(run) for run in cell["runs"]],
                        trained=[f"{self.run_dir(run)}/done.json" for run in cell["runs"]])
            if not cell["runs"]:
                cell["metrics"] = {b: self.base_metrics(cell["model"], b) for b in spec["benchmarks"]}
            cells.append(cell)
        return {"table": table, "number": spec.get("number"), "title": spec["title"], "benchmarks": spec["benchmarks"],
                "methods": ([BASE_MODEL] if spec.get("base_model", False) else []) + list(spec["methods"]),
                "blocks": [dict(b) for b in spec["blocks"]], "reference": spec.get("reference"),
                "validation": self.validation,
                "benchmark_labels": {b: self.benchmarks[b].get("label", b) for b in spec["benchmarks"]},
                "metrics": {b: self.benchmarks[b]["metric"] for b in spec["benchmarks"]}, "cells": cells}

    def table_inputs(self, table: str) -> list[str]:
        spec = self.table_spec(table)
        files = []
        for cell in spec["cells"]:
            files += cell["selections"] + cell["trained"] or list(cell["metrics"].values())
        return files

    def figure_spec(self, figure: str) -> dict:
        spec = self.figures[figure]
        points = [dict(p, selections=[self.selection(run) for run in p["runs"]],
                       metrics_logs=[f"{self.run_dir(run)}/metrics.jsonl" for run in p["runs"]])
                  for p in self._sweeps[figure]]
        out = {"figure": figure, "title": spec.get("title", figure), "model": spec["model"],
               "dataset": spec["dataset"], "benchmarks": self.figure_benchmarks(figure),
               "points": points}
        if spec.get("methods"):
            out["tau"] = self.runs[points[-1]["runs"][0]].params.get("tau", 10.0)
        if "method" in spec:
            method = self.methods[spec["method"]]
            out["method"] = spec["method"]
            out["defaults"] = {s["param"]: objective_parameters(method["objective"]).get(s["param"])
                               for s in spec.get("sweeps", [])} | method.get("params", {})
        return out

    def figure_inputs(self, figure: str) -> list[str]:
        spec = self.figure_spec(figure)
        return sorted({path for p in spec["points"] for path in
                       ([f"{self.run_dir(run)}/done.json" for run in p["runs"]] if "method" in p else p["selections"])})

    def spec(self, name: str) -> dict:
        """The JSON spec of a table or figure, by its config key."""
        return sorted_keys(self.table_spec(name) if name in self.tables else self.figure_spec(name))

    # ------------------------------------------------------------------------------------------ cluster jobs
    def resources(self, step: str, model: str, slurm: dict) -> dict:
        """Snakemake resources of a `train` or `evaluate` job of `model` (config models.<model>.resources.<step>).

        One GPU scheme: `gres` (gpu:N per node). Multi-node jobs carry `mpi` (srun) and one task per node; the
        rule's command then starts `srun ... accelerate launch` itself. `tasks_per_gpu: 0` keeps the slurm plugin
        from turning `tasks` into --ntasks-per-gpu. `slurm` holds slurm_partition / slurm_account ('' = unset).
        """
        spec = self.models[model]["resources"][step]
        nodes, gpus = spec["nodes"], spec["gpus_per_node"]
        return {"nodes": nodes, "tasks": nodes, "tasks_per_gpu": 0, "gres": f"gpu:{gpus}" if gpus else "",
                "mpi": "srun" if nodes > 1 else "", "cpus_per_task": spec["cpus_per_task"],
                "mem_mb": spec["mem_mb"], "runtime": spec["runtime"], **slurm}

    def train_command(self, run_name: str, config: str, mpi: str) -> str:
        """The shell command of one training run: plain, accelerate on one node, or srun + accelerate on several.
        A run folder left by a different config (the run's settings changed, or a corrected value after a failed
        set-up) is moved to its superseded/ folder and the run starts over (`--replace-changed-run`)."""
        spec = self.models[self.runs[run_name].model]["resources"]["train"]
        nodes, gpus = spec["nodes"], spec["gpus_per_node"]
        train = (f"train --config {shlex.quote(config)} --out {shlex.quote(self.run_dir(run_name))} "
                 "--replace-changed-run")
        if nodes == 1 and gpus <= 1:
            return f"conspo {train}"
        accelerate = f"accelerate launch --config_file {shlex.quote(spec['accelerate_config'])}" \
            if spec.get("accelerate_config") else "accelerate launch --multi_gpu"
        if nodes == 1:
            return f"{accelerate} --num_machines 1 --num_processes {gpus} --module conspo.cli {train}"
        launch = (f"{accelerate} --num_machines {nodes} --num_processes {nodes * gpus} "
                  '--machine_rank "$SLURM_NODEID" '
                  '--main_process_ip "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)" '
                  f"--main_process_port 29500 --module conspo.cli {train}")
        return f"{mpi} --nodes={nodes} --ntasks-per-node=1 bash -c {shlex.quote(launch)}"

    def summary(self) -> dict:
        """Job counts of the whole plan (what a dry run of `tables` schedules)."""
        return {"runs": len(self.runs), "evaluations": len(self.evaluations()),
                "base_evaluations": len(self.base_evaluations()), "evaluation_jobs": len(self.evaluation_jobs())}


def model_folder_problem(path: str) -> str | None:
    """What a model folder lacks to be loaded (config, safetensors weights, tokenizer), or None if nothing."""
    folder = Path(path)
    if not folder.is_dir():
        return f"no folder {path!r}"
    missing = [what for what, patterns in (("config.json", ["config.json"]),
                                           ("safetensors weights", ["*.safetensors", "*.safetensors.index.json"]),
                                           ("tokenizer files", ["tokenizer.json", "tokenizer.model", "vocab.json"]))
               if not any(any(folder.glob(pattern)) for pattern in patterns)]
    return f"{path!r} has no {', no '.join(missing)}" if missing else None


def ranges_meet(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    """Whether index ranges [start, end) (end None: to the end) intersect."""
    return (a[1] is None or b[0] < a[1]) and (b[1] is None or a[0] < b[1])


def range_text(rows: tuple[int, int | None]) -> str:
    return f"records {rows[0]}-{'end' if rows[1] is None else rows[1] - 1}"


def _note(log: str | None, path: str) -> None:
    if log is not None:
        with open(log, "w") as handle:
            handle.write(f"wrote {path}\n")


def dump_json(data, path: str, log: str | None = None) -> None:
    """Write a spec as JSON (and, from a workflow rule, a line in its log)."""
    write_json_atomic(path, data, sort_keys=True)
    _note(log, path)


def write_yaml(data, path: str, log: str | None = None) -> None:
    """Write a run config as YAML (and, from a workflow rule, a line in its log)."""
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
    _note(log, path)
