# One job per checkpoint x benchmark, and per base model x benchmark (docs/design.md, `conspo evaluate`).


rule evaluate_checkpoint:
    input:
        done=f"{R}/runs/{{run}}/done.json",
        data=f"{R}/data/benchmarks/{{benchmark}}.jsonl",
    output:
        metrics=f"{R}/evals/{{run}}/step-{{step}}/{{benchmark}}.metrics.json",
        samples=f"{R}/evals/{{run}}/step-{{step}}/{{benchmark}}.samples.jsonl",
    params:
        checkpoint=lambda wildcards: f"{PLAN.run_dir(wildcards.run)}/checkpoints/step-{wildcards.step}",
        options=lambda wildcards: PLAN.evaluate_options(model_of_run(wildcards), wildcards.benchmark),
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{R}/logs/evaluate/{{run}}/step-{{step}}/{{benchmark}}.log",
    threads: job_threads("evaluate", model_of_run)
    resources:
        **job_resources("evaluate", model_of_run),
    conda:
        CONDA_ENV
    shell:
        "conspo evaluate --model {params.checkpoint} --benchmark {wildcards.benchmark} --data {input.data}"
        " {params.options} --out {params.out} > {log} 2>&1"


rule evaluate_base_model:
    input:
        model=lambda wildcards: PLAN.model_dir(model_of_slug(wildcards)),
        data=f"{R}/data/benchmarks/{{benchmark}}.jsonl",
    output:
        metrics=f"{R}/evals/base/{{model}}/{{benchmark}}.metrics.json",
        samples=f"{R}/evals/base/{{model}}/{{benchmark}}.samples.jsonl",
    params:
        options=lambda wildcards: PLAN.evaluate_options(model_of_slug(wildcards), wildcards.benchmark),
        out=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{R}/logs/evaluate/base/{{model}}/{{benchmark}}.log",
    threads: job_threads("evaluate", model_of_slug)
    resources:
        **job_resources("evaluate", model_of_slug),
    conda:
        CONDA_ENV
    shell:
        "conspo evaluate --model {input.model} --benchmark {wildcards.benchmark} --data {input.data}"
        " {params.options} --out {params.out} > {log} 2>&1"
