# Checkpoint selection per run: the best evaluation (as the paper reports) and the last checkpoint.


rule select_checkpoint:
    input:
        lambda wildcards: PLAN.run_evaluations(wildcards.run),
    output:
        f"{R}/selected/{{run}}.json",
    log:
        f"{R}/logs/select/{{run}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo select --run {wildcards.run} --metrics {input} --out {output} > {log} 2>&1"
