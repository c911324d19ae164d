# The ConSPO reproducibility workflow: every cell of the paper's Tables 1-6 and Figures 1-2 as a target.
#   embedded default (tiny models, synthetic tasks):  snakemake --cores 2 all
#   the paper on a SLURM cluster:                     snakemake --profile slurm tables
# docs/workflow.md lists the targets and how to regenerate a single cell.

from snakemake.utils import min_version

from conspo.workflow_config import check_config_files, check_schema

min_version("9.20")


# Config errors stop the workflow here, before any job, in one line naming the file and line or the dotted key
# (conspo.workflow_config, then conspo.plan in common.smk). A --configfile that is not YAML at all is refused by
# Snakemake itself before this file runs; `snakemake --verbose` shows its line.
if not workflow.overwrite_configfiles:
    check_config_files(["config/tiny.yaml"])

    configfile: "config/tiny.yaml"


check_config_files(workflow.configfiles)  # keys defined twice: Snakemake's loader keeps the last without a word
check_schema(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule tables:
    input:
        TABLE_OUTPUTS,
        FIGURE_OUTPUTS,
        CURVE_OUTPUTS,
    default_target: True
    localrule: True


rule all:
    input:
        rules.tables.input,
    localrule: True


for table in PLAN.tables:

    rule:
        name:
            table
        input:
            table_outputs(table),
        localrule: True


for figure in PLAN.figures:

    rule:
        name:
            figure
        input:
            figure_output(figure),
        localrule: True
