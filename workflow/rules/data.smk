# Training sets, benchmarks and models: normalised JSONL records and checkpoint folders.
import shlex


rule prepare_training_set:
    # exclude_benchmarks: without the problems of every benchmark the config evaluates (the count is in the log)
    input:
        exclude=lambda wildcards: PLAN.excluded_benchmarks(PLAN.dataset_of_slug(wildcards.dataset)),
    output:
        f"{R}/data/train/{{dataset}}.jsonl",
    params:
        options=lambda wildcards: command_args(PLAN.datasets[PLAN.dataset_of_slug(wildcards.dataset)]["prepare"]),
        exclude=lambda wildcards, input: shlex.join(["--exclude", *input.exclude]) if input.exclude else "",
    log:
        f"{R}/logs/prepare/train-{{dataset}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo prepare-data {params.options} {params.exclude} --out {output} > {log} 2>&1"


rule prepare_benchmark:
    output:
        f"{R}/data/benchmarks/{{benchmark}}.jsonl",
    params:
        options=lambda wildcards: command_args(PLAN.benchmarks[wildcards.benchmark]["prepare"]),
    log:
        f"{R}/logs/prepare/benchmark-{{benchmark}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo prepare-data {params.options} --out {output} > {log} 2>&1"


rule prepare_model:
    # hub: download; tiny: build and warm-start (conspo build-tiny-model); smollm2: convert the PyPI GGUF;
    # local models are used where they are (no job)
    output:
        directory(f"{R}/models/{{model}}"),
    params:
        command=lambda wildcards: PLAN.model_command(PLAN.model_of_slug(wildcards.model)),
    log:
        f"{R}/logs/prepare/model-{{model}}.log",
    priority: 10  # every run and base evaluation waits for its model: start builds before cheaper jobs
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "{params.command} > {log} 2>&1"
