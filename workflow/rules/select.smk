# Checkpoint selection per run: the best evaluation (as the paper reports), the last checkpoint, and (config
# `selection.validation`) the best on a validation benchmark that shares no problem with the training set.


rule check_validation:
    input:
        train=f"{R}/data/train/{{dataset}}.jsonl",
        validation=lambda wildcards: PLAN.benchmark_data(PLAN.validation),
    output:
        f"{R}/data/validation/{{dataset}}.json",
    log:
        f"{R}/logs/select/check-validation-{{dataset}}.log",
    priority: 100
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo check-validation --train {input.train} --validation {input.validation} --out {output} > {log} 2>&1"


rule select_checkpoint:
    input:
        metrics=lambda wildcards: PLAN.run_evaluations(wildcards.run),
        validation=lambda wildcards: PLAN.validation_check(wildcards.run),
    output:
        f"{R}/selected/{{run}}.json",
    params:
        validation=f"--validation {PLAN.validation}" if PLAN.validation else "",
    log:
        f"{R}/logs/select/{{run}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo select --run {wildcards.run} --metrics {input.metrics} {params.validation} --out {output} > {log} 2>&1"
