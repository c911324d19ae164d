# One job per checkpoint and per base model: `conspo evaluate` loads the engine once and evaluates every benchmark
# the checkpoint (model) is needed for (docs/workflow.md). A rule's outputs are fixed, so there is one rule per
# distinct list of benchmarks (conspo.plan.Plan.evaluation_rules): `evaluate_checkpoint` and `evaluate_base_model`,
# then `..._2`, ... when some runs or models are shown on other benchmarks (the paper grid: Table 4's model).
# Only the metrics files are outputs: Snakemake deletes a job's outputs before it runs and those of a killed job
# on --rerun-incomplete, so the samples (every generated, verified response) are not outputs; the evaluation keeps
# those on disk and generates only what is missing. Regenerating one cell's metrics file recomputes it from its
# samples and rewrites the other benchmarks' from theirs; delete the cell's samples file as well to draw it anew.


def evaluate_options(model_of, benchmarks):
    return lambda wildcards: PLAN.evaluate_options(model_of(wildcards), benchmarks)


EVALUATION_RULES = {"checkpoint": [], "base": []}
for group in PLAN.evaluation_rules():
    EVALUATION_RULES[group["kind"]].append(group)
    suffix = f"_{len(EVALUATION_RULES[group['kind']])}" if len(EVALUATION_RULES[group["kind"]]) > 1 else ""
    benchmark_files = [PLAN.benchmark_data(b) for b in group["benchmarks"]]
    if group["kind"] == "checkpoint":

        rule:
            name:
                f"evaluate_checkpoint{suffix}"
            input:
                done=f"{R}/runs/{{run}}/done.json",
                data=benchmark_files,
            output:
                [f"{R}/evals/{{run}}/step-{{step}}/{b}.metrics.json" for b in group["benchmarks"]],
            wildcard_constraints:
                run=alternatives(group["members"]),
            params:
                checkpoint=lambda wildcards: f"{PLAN.run_dir(wildcards.run)}/checkpoints/step-{wildcards.step}",
                options=evaluate_options(model_of_run, group["benchmarks"]),
                out=lambda wildcards: f"{R}/evals/{wildcards.run}/step-{wildcards.step}",
            log:
                f"{R}/logs/evaluate/{{run}}/step-{{step}}.log",
            threads: job_threads("evaluate", model_of_run)
            resources:
                **job_resources("evaluate", model_of_run),
            conda:
                CONDA_ENV
            shell:
                "conspo evaluate --model {params.checkpoint} {params.options} --out {params.out} > {log} 2>&1"

    else:

        rule:
            name:
                f"evaluate_base_model{suffix}"
            input:
                model=lambda wildcards: PLAN.model_dir(model_of_slug(wildcards)),  # a local model: where it is
                data=benchmark_files,
            output:
                [f"{R}/evals/base/{{model}}/{b}.metrics.json" for b in group["benchmarks"]],
            wildcard_constraints:
                model=alternatives(group["members"]),
            params:
                options=evaluate_options(model_of_slug, group["benchmarks"]),
                out=lambda wildcards: f"{R}/evals/base/{wildcards.model}",
            log:
                f"{R}/logs/evaluate/base/{{model}}.log",
            threads: job_threads("evaluate", model_of_slug)
            resources:
                **job_resources("evaluate", model_of_slug),
            conda:
                CONDA_ENV
            shell:
                "conspo evaluate --model {input.model} {params.options} --out {params.out} > {log} 2>&1"
