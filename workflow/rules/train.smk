# One job per distinct training run (conspo.plan keys runs by their resolved hyperparameters).


rule write_run_config:
    output:
        f"{R}/runs/{{run}}/run.yaml",
    params:
        config=lambda wildcards: PLAN.run_config(wildcards.run),
    log:
        f"{R}/logs/runs/{{run}}-config.log",
    localrule: True
    run:
        write_yaml(params.config, output[0], log[0])


rule train:
    # Outputs are files only: a killed job leaves its checkpoints, and the re-run resumes from them.
    input:
        config=f"{R}/runs/{{run}}/run.yaml",
        data=lambda wildcards: PLAN.train_data(PLAN.runs[wildcards.run].dataset),
        model=lambda wildcards: PLAN.model_dir(model_of_run(wildcards)),
    output:
        f"{R}/runs/{{run}}/done.json",
    params:
        command=lambda wildcards, input, resources: PLAN.train_command(wildcards.run, input.config, resources.mpi),
    log:
        f"{R}/logs/train/{{run}}.log",
    threads: job_threads("train", model_of_run)
    resources:
        **job_resources("train", model_of_run),
    conda:
        CONDA_ENV
    shell:
        "{params.command} > {log} 2>&1"
