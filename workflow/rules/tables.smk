# Tables 1-6: spec (which files fill which cell) -> cells (long form: seed means, errors, verdicts) -> rendered tables
# and verdict plots.


rule write_spec:
    output:
        f"{R}/specs/{{spec}}.json",
    params:
        spec=lambda wildcards: PLAN.spec(wildcards.spec),
    log:
        f"{R}/logs/specs/{{spec}}.log",
    localrule: True
    run:
        dump_json(params.spec, output[0], log[0])


rule aggregate_table:
    input:
        spec=f"{R}/specs/{{table}}.json",
        cells=lambda wildcards: PLAN.table_inputs(wildcards.table),
    output:
        cells=f"{R}/tables/{{table}}/cells.csv",
        paired=f"{R}/tables/{{table}}/paired.csv",
    log:
        f"{R}/logs/tables/{{table}}-aggregate.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo tables aggregate --spec {input.spec} --cells {output.cells} --paired {output.paired} > {log} 2>&1"


rule render_table:
    input:
        spec=f"{R}/specs/{{table}}.json",
        cells=f"{R}/tables/{{table}}/cells.csv",
        paired=f"{R}/tables/{{table}}/paired.csv",
        published=config["published"],
    output:
        csv=report(
            f"{R}/tables/{{table}}/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "CSV (download)"},
        ),
        markdown=f"{R}/tables/{{table}}/{{table}}.md",
        latex=f"{R}/tables/{{table}}/{{table}}.tex",
        html=report(
            f"{R}/tables/{{table}}/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "HTML"},
        ),
        verdicts=report(
            f"{R}/tables/{{table}}/{{table}}-verdicts.png",
            caption="../report/verdicts.rst",
            category="Tables",
            subcategory="{table}",
            labels={"table": "{table}", "format": "verdict plot"},
        ),
    params:
        prefix=lambda wildcards: PLAN.table_prefix(wildcards.table),
    log:
        f"{R}/logs/tables/{{table}}-render.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "conspo tables render --spec {input.spec} --cells {input.cells} --paired {input.paired}"
        " --published {input.published} --out-prefix {params.prefix} > {log} 2>&1"
