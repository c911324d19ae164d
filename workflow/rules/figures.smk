# Figure 1 (gradient coefficients from the shared core; training rewards), Figure 2 (parameter study), and the
# training curves of every run.


rule draw_figure1:
    input:
        spec=f"{R}/specs/figure1.json",
        runs=lambda wildcards: PLAN.figure_inputs("figure1"),
    output:
        report(
            f"{R}/figures/figure1.png",
            caption="../report/figure1.rst",
            category="Figures",
            labels={"figure": "Figure 1"},
        ),
    log:
        f"{R}/logs/figures/figure1.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo figures figure1 --spec {input.spec} --out {output} > {log} 2>&1"


rule draw_figure2:
    input:
        spec=f"{R}/specs/figure2.json",
        runs=lambda wildcards: PLAN.figure_inputs("figure2"),
    output:
        report(
            f"{R}/figures/figure2.png",
            caption="../report/figure2.rst",
            category="Figures",
            labels={"figure": "Figure 2"},
        ),
    log:
        f"{R}/logs/figures/figure2.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo figures figure2 --spec {input.spec} --out {output} > {log} 2>&1"


rule training_curves:
    input:
        f"{R}/runs/{{run}}/done.json",
    output:
        report(
            f"{R}/figures/curves/{{run}}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels=lambda wildcards: {"run": wildcards.run},
        ),
    params:
        log_file=lambda wildcards: f"{PLAN.run_dir(wildcards.run)}/metrics.jsonl",
    log:
        f"{R}/logs/figures/curves-{{run}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo figures curves --metrics {params.log_file} --title {wildcards.run} --out {output} > {log} 2>&1"
