"""Tables 1-6 and the table beyond the paper from synthetic metrics files on the paper's grid: the paper's rows and
columns, marks, comparisons."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from conspo import select, tables
from conspo.plan import AVERAGE, BASE_MODEL, Plan

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "config" / "published_tables.csv"
N_PROBLEMS = 1000  # one sample per problem: a value v% is exactly round(10 v) correct problems


def metrics_file(path: str, benchmark: str, value: float) -> None:
    correct = round(value * N_PROBLEMS / 100)
    counts = [1] * correct + [0] * (N_PROBLEMS - correct)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({
        "benchmark": benchmark, "metric": "pass@1", "value": 100 * correct / N_PROBLEMS, "k": 1,
        "n_problems": N_PROBLEMS, "se_problems": 1.5, "se_generation": 0.0, "per_problem_correct": counts,
        "engine": "synthetic", "extraction": "boxed", "sampling": {}, "checkpoint": path}))


def published_values() -> dict:
    frame = pd.read_csv(PUBLISHED)
    return {(r.model, r.dataset, r.method, r.benchmark): r.value for r in frame.itertuples()}


@pytest.fixture(scope="module")
def paper_results(tmp_path_factory):
    """Metrics files for every evaluation of the paper grid: the last checkpoint scores the paper's value, earlier
    ones 5 points less, except ConSPO on DAPO-Math-17k (Table 5) whose middle checkpoint is best (1 point above)."""
    out = tmp_path_factory.mktemp("paper")
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["results"] = str(out / "results")
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    plan = Plan.from_config(copy.deepcopy(config))
    paper = published_values()
    method_of_run = {}
    for table in plan.tables:
        for cell in plan.cells(table):
            for run in cell["runs"]:
                method_of_run.setdefault(run, cell["method"])
    for run_name, run in plan.runs.items():
        steps = plan.checkpoint_steps(run_name)
        for step in steps:
            for bench in plan.run_benchmarks(run_name):
                target = paper.get((run.model, run.dataset, method_of_run.get(run_name), bench), 30.0)
                value = target if step == steps[-1] else target - 5
                if run_name == "deepseek-r1-distill-qwen-1.5b--dapo-math-17k--conspo" and step == 200:
                    value = target + 1
                metrics_file(plan.eval_metrics(run_name, step, bench), bench, value)
        Path(plan.run_dir(run_name)).mkdir(parents=True, exist_ok=True)
        Path(plan.run_dir(run_name), "done.json").write_text("{}")  # finished before learning signals were logged
        files = [plan.eval_metrics(run_name, s, b) for s in steps for b in plan.run_benchmarks(run_name)]
        select.main(["select", "--run", run_name, "--metrics", *files, "--out", plan.selection(run_name)])
    for model in plan.models:
        for bench in plan.base_benchmarks(model):
            dataset = "DeepScaleR-Preview"
            metrics_file(plan.base_metrics(model, bench), bench, paper[(model, dataset, BASE_MODEL, bench)])
    rendered = {}
    for table in plan.tables:
        spec_path = out / f"{table}.json"
        spec_path.write_text(json.dumps(plan.table_spec(table)))
        cells, paired = out / f"{table}.cells.csv", out / f"{table}.paired.csv"
        assert tables.main(["tables", "aggregate", "--spec", str(spec_path), "--cells", str(cells),
                            "--paired", str(paired)]) == 0
        prefix = plan.table_prefix(table)
        assert tables.main(["tables", "render", "--spec", str(spec_path), "--cells", str(cells), "--paired",
                            str(paired), "--published", str(PUBLISHED), "--out-prefix", prefix]) == 0
        rendered[table] = prefix
    return plan, rendered


def test_selection_takes_the_best_checkpoint_and_records_the_last(paper_results):
    plan, _ = paper_results
    chosen = json.loads(Path(plan.selection("deepseek-r1-distill-qwen-1.5b--dapo-math-17k--conspo")).read_text())
    assert chosen["best"]["step"] == 200 and chosen["last"]["step"] == 280
    assert chosen["best"]["benchmarks"]["HMMT25"]["value"] == pytest.approx(15.2)  # paper 14.2 + 1
    assert chosen["last"]["benchmarks"]["HMMT25"]["value"] == pytest.approx(14.2)
    assert [point["step"] for point in chosen["history"]] == [100, 200, 280]


def test_each_table_has_the_papers_rows_and_columns(paper_results):
    plan, rendered = paper_results
    published = pd.read_csv(PUBLISHED)
    for table, prefix in rendered.items():
        spec = plan.tables[table]
        if spec["number"] is None:
            continue
        frame = pd.read_csv(f"{prefix}.csv", keep_default_na=False)
        best = frame[frame["checkpoint"] == "best"]
        theirs = published[published["table"] == spec["number"]]
        expected_rows = list(dict.fromkeys(zip(theirs["model"], theirs["method"])))
        assert list(zip(best["model"], best["method"])) == expected_rows, table
        labels = [plan.benchmarks[b].get("label", b) for b in spec["benchmarks"]] + ["Avg."]
        value_columns = [c for c in frame.columns if c in labels]
        assert value_columns == labels, table
        assert list(frame["checkpoint"]).count("last") == len(expected_rows)
    columns = pd.read_csv(f"{rendered['table4']}.csv").columns
    assert list(columns[6:-1:5]) == ["AIME24", "MATH500", "AMC", "O-Bench", "Avg."]
    assert columns[-1] == "learned nothing"  # why a row is not ranked ('' for every row here)
    table2 = pd.read_csv(f"{rendered['table2']}.csv")
    assert list(dict.fromkeys(table2["model"])) == ["DeepSeek-R1-Distill-Qwen-7B", "DeepSeek-R1-Distill-Llama-8B"]


def test_reproduced_equal_to_published_gives_zero_differences(paper_results):
    plan, rendered = paper_results
    frame = pd.read_csv(f"{rendered['table1']}.csv")
    best = frame[frame["checkpoint"] == "best"].set_index("method")
    assert best.loc["ConSPO", "AIME24"] == pytest.approx(34.7)
    assert best.loc["ConSPO", "AIME24 paper"] == pytest.approx(34.7)
    assert best.loc["ConSPO", "AIME24 diff"] == pytest.approx(0.0)
    last = frame[frame["checkpoint"] == "last"].set_index("method")
    assert last.loc["GRPO", "HMMT25"] == pytest.approx(11.7)


def test_comparison_uses_the_right_published_value(paper_results):
    plan, rendered = paper_results
    # the same model and method: Table 1 (DeepScaleR) ConSPO AIME24 = 34.7, Table 5 (DAPO-Math-17k) = 34.2
    table5 = pd.read_csv(f"{rendered['table5']}.csv").set_index(["checkpoint", "method"])
    assert table5.loc[("best", "ConSPO"), "AIME24 paper"] == pytest.approx(34.2)
    # there the best checkpoint is one point above the paper on every benchmark, the last equal to it
    assert table5.loc[("best", "ConSPO"), "HMMT25 diff"] == pytest.approx(1.0)
    assert table5.loc[("best", "ConSPO"), "HMMT25 paper"] == pytest.approx(14.2)
    assert table5.loc[("best", "ConSPO"), "step"] == 200 and table5.loc[("last", "ConSPO"), "step"] == 280
    assert table5.loc[("last", "ConSPO"), "HMMT25 diff"] == pytest.approx(0.0)
    # Table 6's ablation names are compared with Table 6's numbers
    table6 = pd.read_csv(f"{rendered['table6']}.csv").set_index(["checkpoint", "method"])
    assert table6.loc[("best", "w/o scheduled margin"), "MATH500 paper"] == pytest.approx(89.0)


def render_edited(plan, tmp_path, edit) -> Path:
    """Table 1's files rendered under a spec changed by `edit(spec)`; returns the output prefix."""
    spec = plan.table_spec("table1")
    edit(spec)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    agg_cells, agg_paired = tmp_path / "cells.csv", tmp_path / "paired.csv"
    tables.main(["tables", "aggregate", "--spec", str(spec_path), "--cells", str(agg_cells), "--paired",
                 str(agg_paired)])
    tables.main(["tables", "render", "--spec", str(spec_path), "--cells", str(agg_cells), "--paired",
                 str(agg_paired), "--published", str(PUBLISHED), "--out-prefix", str(tmp_path / "t")])
    return tmp_path / "t"


def test_cells_without_a_published_counterpart_say_so_once(paper_results, tmp_path):
    def unpublished_model(spec):  # same files, a model the paper never trained
        spec["blocks"][0]["model"] = "tiny-a"
        for cell in spec["cells"]:
            cell["model"] = "tiny-a"

    prefix = render_edited(paper_results[0], tmp_path, unpublished_model)
    note = "The paper has no published value for any cell of this table."
    for ext in ("html", "md", "tex"):
        text = Path(f"{prefix}.{ext}").read_text()
        assert text.count(tables.NO_PUBLISHED) == 1 and note in text, ext  # once, not under each of 2 x 9 x 8 cells
        assert "Δ" not in text and "paper 3" not in text
    frame = pd.read_csv(f"{prefix}.csv")
    assert frame["AIME24 paper"].isna().all()


def test_a_row_without_published_values_is_named_in_the_note(paper_results, tmp_path):
    def renamed_method(spec):  # GRPO's files under a method name the paper has no row for
        spec["methods"] = [m if m != "GRPO" else "GRPO (ours)" for m in spec["methods"]]
        for cell in spec["cells"]:
            cell["method"] = "GRPO (ours)" if cell["method"] == "GRPO" else cell["method"]

    prefix = render_edited(paper_results[0], tmp_path, renamed_method)
    html = Path(f"{prefix}.html").read_text()
    assert html.count(tables.NO_PUBLISHED) == 1
    assert "The paper has no published value for: GRPO (ours) (every column)." in html
    assert html.count('class="paper"') == 2 * 8 * 8  # the other 8 rows keep their published value in every column
    row = next(line for line in Path(f"{prefix}.md").read_text().splitlines() if line.startswith("| GRPO (ours)"))
    assert "paper" not in row and "±" in row


def test_table_beyond_the_paper_says_no_cell_is_published(paper_results):
    """CLIPO and CEPO score the stand-in 30.0 everywhere; GRPO and ConSPO are Table 1's runs (the paper's values)."""
    _, rendered = paper_results
    title = "Beyond the paper: ConSPO vs CLIPO and CEPO"
    frame = pd.read_csv(f"{rendered['beyond']}.csv")
    assert list(frame[frame["checkpoint"] == "best"]["method"]) == [BASE_MODEL, "GRPO", "CLIPO", "CEPO", "ConSPO"]
    assert frame[[c for c in frame.columns if c.endswith(" paper") or c.endswith(" diff")]].isna().all().all()
    table1 = pd.read_csv(f"{rendered['table1']}.csv").set_index(["checkpoint", "method"])
    beyond = frame.set_index(["checkpoint", "method"])
    assert beyond.loc[("best", "ConSPO"), "AIME24"] == table1.loc[("best", "ConSPO"), "AIME24"] == pytest.approx(34.7)
    assert beyond.loc[("best", "CLIPO"), "MATH500"] == pytest.approx(30.0)
    html = Path(f"{rendered['beyond']}.html").read_text()
    assert f"<title>{title}</title>" in html and "Table None" not in html
    assert html.count(tables.NO_PUBLISHED) == 1  # one note for the 2 x 5 x 8 cells of the best and last tables
    assert 'id="beyond-best"' in html and 'id="beyond-last"' in html and 'id="beyond-paired"' in html
    markdown = Path(f"{rendered['beyond']}.md").read_text()
    assert markdown.startswith(f"# {title}\n") and "Δ" not in markdown
    marks = marked(markdown)
    assert marks["CLIPO"]["HMMT25"] == marks["CEPO"]["HMMT25"] == "best" and marks["ConSPO"]["HMMT25"] == "second"
    assert marks["ConSPO"]["MATH500"] == "best" and marks["GRPO"]["MATH500"] == "second"
    assert marks[BASE_MODEL]["MATH500"] == "" and marks["CLIPO"]["MATH500"] == ""
    latex = Path(f"{rendered['beyond']}.tex").read_text()
    assert rf"\caption{{{title} " in latex and latex.count(tables.NO_PUBLISHED) == 1 and r"\underline{" in latex


def marked(markdown: str, block_title: str | None = None) -> dict[str, dict[str, str]]:
    """{method: {column: 'best'|'second'|''}} from the first table of a Markdown rendering."""
    lines = markdown.splitlines()
    start = 0 if block_title is None else next(i for i, l in enumerate(lines) if l.startswith(f"**{block_title}**"))
    header = next(l for l in lines[start:] if l.startswith("| Method"))
    columns = [c.strip() for c in header.strip("|").split("|")][2:]
    out = {}
    for line in lines[lines.index(header, start) + 2:]:
        if not line.startswith("|"):
            break
        parts = [c.strip() for c in line.strip("|").split("|")]
        out[parts[0]] = {col: "best" if text.startswith("**") else "second" if text.startswith("<u>") else ""
                         for col, text in zip(columns, parts[2:])}
    return out


def test_bold_and_underline_follow_the_paper(paper_results):
    _, rendered = paper_results
    marks = marked(Path(f"{rendered['table3']}.md").read_text())
    # the paper's Table 3: AIME24 ties DisCO and ConSPO in bold (19.8), Dr. GRPO underlined (17.4)
    assert marks["ConSPO"]["AIME24"] == "best" and marks["DisCO"]["AIME24"] == "best"
    assert marks["Dr. GRPO"]["AIME24"] == "second" and marks["GRPO"]["AIME24"] == ""
    # MATH500: DisCO bold (83.0), Dr. GRPO underlined (82.6), ConSPO (82.2) unmarked
    assert marks["DisCO"]["MATH500"] == "best" and marks["Dr. GRPO"]["MATH500"] == "second"
    assert marks["ConSPO"]["MATH500"] == "" and marks[BASE_MODEL]["MATH500"] == ""
    assert marks["ConSPO"]["Avg."] == "best" and marks["Dr. GRPO"]["Avg."] == "second"
    # the paper's Table 4: three methods tie for second on OlympiadBench (18.7)
    marks4 = marked(Path(f"{rendered['table4']}.md").read_text())
    assert [m for m, cols in marks4.items() if cols["O-Bench"] == "second"] == ["GRPO", "Dr. GRPO", "DisCO"]
    # Table 2: marks are per model block
    marks_llama = marked(Path(f"{rendered['table2']}.md").read_text(), "DeepSeek-R1-Distill-Llama-8B")
    assert marks_llama["Dr. GRPO"]["AIME24"] == "best" and marks_llama["DisCO"]["AIME24"] == "second"
    latex = Path(f"{rendered['table3']}.tex").read_text()
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert latex.count(r"\textbf{") == 9 and r"\underline{17.4}" in latex
    row = next(line for line in latex.splitlines() if line.startswith("DisCO &"))
    assert row.count(r"\textbf{") == 2  # AIME24 19.8 and MATH500 83.0


def test_paired_differences_against_conspo(paper_results):
    plan, rendered = paper_results
    spec = plan.table_spec("table1")
    _, frame = tables.aggregate(spec)
    assert set(frame["selection"]) == {"best", "last"}  # no validation benchmark in the paper config
    frame = frame[frame["selection"] == "best"]
    grpo = frame[(frame["method"] == "GRPO") & (frame["benchmark"] == "AIME24")].iloc[0]
    # ConSPO solves 347 of 1000 problems, GRPO 286: the first 286 are shared, so the paired difference is 6.1 points;
    # one seed: the error is the paired standard error over problems, and run-to-run variance is unmeasured
    assert grpo["difference"] == pytest.approx(6.1)
    assert grpo["se"] == pytest.approx(100 * (0.061 * 0.939 * 1000 / 999) ** 0.5 / 1000 ** 0.5, rel=1e-6)
    assert not grpo["seeds_measured"] and math.isnan(grpo["se_seeds"]) and grpo["df"] == pytest.approx(999)
    assert grpo["comparisons"] == 8 and grpo["level"] == 0.95  # Base Model and seven methods against ConSPO
    assert grpo["verdict"] == "better" and 0 < grpo["low"] < 6.1 < grpo["high"]
    assert set(frame["method"]) == {BASE_MODEL, "GRPO", "DAPO", "Dr. GRPO", "DisCO", "GMPO", "CISPO", "SAPO"}
    assert set(frame["benchmark"]) == set(spec["benchmarks"]) | {AVERAGE}
    html = Path(f"{rendered['table1']}.html").read_text()
    assert "Paired comparison: ConSPO − method (best checkpoints)" in html and "Bonferroni" in html
    assert "run-to-run variance is not measured" in html  # the paper's setting: one seed
    assert "Each cell: one training run (one seed) ± its standard error over problems" in html
    assert re.search(r'data-benchmark="AIME24" data-verdict="better">\+6\.1 .*\[\+\d\.\d, \+\d\.\d\]; paper \+6\.1',
                     html)


def test_verdict_plot_shows_the_intervals_beside_the_papers_claims(paper_results):
    """Reproduced = published here, so every interval is centred on the paper's claimed difference."""
    from conspo.figures import read_data

    plan, rendered = paper_results
    data = read_data(f"{rendered['table1']}-verdicts.png")
    assert data["reference"] == "ConSPO" and data["comparisons"] == 8 and data["level"] == 0.95
    assert data["columns"] == ["AIME24", "AIME25", "AIME26", "HMMT25", "MATH500", "AMC", "O-Bench", "Avg."]
    rows = {(r["method"], r["benchmark"]): r for r in data["rows"]}
    assert len(rows) == 8 * 8
    sapo = rows[("SAPO", AVERAGE)]
    assert sapo["claimed"] == pytest.approx(44.4 - 42.8) and sapo["low"] < sapo["difference"] < sapo["high"]
    assert sapo["difference"] == pytest.approx(44.36 - 42.81, abs=0.02)  # the means of the displayed values
    assert rows[("GRPO", "AIME24")]["claimed"] == pytest.approx(34.7 - 28.6)
    assert all(r["claimed"] is not None for r in data["rows"])  # Table 1 publishes every cell
    beyond = read_data(f"{rendered['beyond']}-verdicts.png")
    assert all(r["claimed"] is None for r in beyond["rows"])  # no published values beyond the paper
    assert read_data(f"{rendered['table2']}-verdicts.png")["comparisons"] == 2 * 5  # two blocks of five rows
