# Planning lives in conspo.plan (tested); this file only exposes it to the rules.
import os
import re
import sys

from conspo.plan import Plan, command_args, dump_json, slug, write_yaml

# `conspo`, `accelerate` and `hf` are those of the environment that runs Snakemake, whether it is activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')

PLAN = Plan.from_config(config)
R = PLAN.results

# Cluster placement from the environment (docs/workflow.md); empty = let the slurm plugin choose.
SLURM = {
    "slurm_partition": os.environ.get("CONSPO_SLURM_PARTITION", ""),
    "slurm_account": os.environ.get("CONSPO_SLURM_ACCOUNT", ""),
}
# The software of every rule when Snakemake deploys it (--sdm conda); paths are relative to workflow/rules/.
CONDA_ENV = "../envs/conspo.yaml"
JOB_RESOURCES = ("nodes", "tasks", "tasks_per_gpu", "gres", "mpi", "cpus_per_task", "mem_mb", "runtime",
                 "slurm_partition", "slurm_account")


def alternatives(names):
    """A wildcard regex matching exactly these names (nothing when empty)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    run=alternatives(PLAN.runs),
    step=r"\d{6}",
    benchmark=alternatives(PLAN.benchmarks),
    dataset=alternatives(slug(d) for d in PLAN.datasets),
    table=alternatives(PLAN.tables),


def model_of_run(wildcards):
    return PLAN.runs[wildcards.run].model


def model_of_slug(wildcards):
    return PLAN.model_of_slug(wildcards.model)


def job_resources(step, model_of):
    """Snakemake resources of a `train` or `evaluate` job, per job from the model's config."""
    return {
        key: (lambda wildcards, key=key: PLAN.resources(step, model_of(wildcards), SLURM)[key])
        for key in JOB_RESOURCES
    }


def job_threads(step, model_of):
    return lambda wildcards: PLAN.models[model_of(wildcards)]["resources"][step]["cpus_per_task"]


def table_outputs(table):
    prefix = PLAN.table_prefix(table)
    return [f"{prefix}.{ext}" for ext in ("csv", "md", "tex", "html")] + [f"{prefix}-verdicts.png"]


def figure_output(figure):
    return f"{R}/figures/{figure}.png"


TABLE_OUTPUTS = [path for table in PLAN.tables for path in table_outputs(table)]
FIGURE_OUTPUTS = [figure_output(figure) for figure in PLAN.figures]
CURVE_OUTPUTS = [f"{R}/figures/curves/{run}.png" for run in PLAN.runs]
