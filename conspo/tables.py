"""`conspo tables`: Tables 1-6 in the paper's layout, with the paper's numbers beside the reproduced ones, and tables
beyond the paper (no `number`: every cell says it has no published counterpart) in the same layout.

    conspo tables aggregate --spec specs/table1.json --cells tables/table1/cells.csv --paired tables/table1/paired.csv
    conspo tables render --spec specs/table1.json --cells ... --paired ... --published config/published_tables.csv \
        --out-prefix tables/table1/table1        # -> .csv .md .tex .html

`aggregate` reads the selection of every run (conspo select) and the base models' metrics files and writes the cells
in long form (one line per row x benchmark x checkpoint choice, the average over the table's benchmarks included)
and the paired differences of the reference method (ConSPO) against every other row, per benchmark, at the best
checkpoints (conspo.metrics.paired_difference: mean per-problem difference and its standard error).

`render` lays the cells out as the paper does (rows = methods, columns = benchmarks + Avg., one block per model):
each cell shows the reproduced value at the best checkpoint ± its standard error over problems, and the paper's
value with the difference where the paper has the cell; one note under the title names the cells it does not have
(all of them for the embedded default and tables beyond the paper). Per block and column the best value is bold and
the runner-up underlined (on the displayed one-decimal values, ties share the mark; base-model rows are not
ranked). The last checkpoint's table and the paired differences follow.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

import pandas as pd

from .atomic import write_text_atomic
from .metrics import paired_difference
from .names import AVERAGE, BASE_MODEL

SELECTIONS = ("best", "last")
CELL_COLUMNS = ["number", "model", "dataset", "method", "run", "selection", "step", "benchmark", "metric", "value",
                "se_problems", "se_generation", "k", "n_problems"]
PAIRED_COLUMNS = ["model", "dataset", "reference", "method", "benchmark", "difference", "se", "n_problems"]
AVERAGE_LABEL = "Avg."
NO_PUBLISHED = "no published value"


# ---------------------------------------------------------------------------------------------- aggregate


def combined_se(errors: list[float]) -> float:
    """Standard error of a mean of independent estimates: sqrt(sum se^2) / n."""
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def _read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def cell_checkpoints(cell: dict) -> dict[str, dict]:
    """{'best': {step, benchmarks: {name: metrics}}, 'last': ...} of one table row (base model: step 0 for both)."""
    if cell["run"] is None:
        metrics = {b: _read_json(path) for b, path in cell["metrics"].items()}
        return {choice: {"step": 0, "benchmarks": metrics} for choice in SELECTIONS}
    selection = _read_json(cell["selection"])
    return {choice: selection[choice] for choice in SELECTIONS}


def aggregate(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long-form cells of one table and the paired differences against its reference method."""
    rows, counts = [], {}
    for cell in spec["cells"]:
        checkpoints = cell_checkpoints(cell)
        for choice in SELECTIONS:
            chosen = checkpoints[choice]
            base = {"number": spec["number"], "model": cell["model"], "dataset": cell["dataset"],
                    "method": cell["method"], "run": cell["run"] or "", "selection": choice, "step": chosen["step"]}
            values, errors = [], []
            for bench in spec["benchmarks"]:
                if bench not in chosen["benchmarks"]:
                    raise ValueError(f"{spec['table']}: {cell['method']} on {cell['model']} has no {bench} evaluation")
                m = chosen["benchmarks"][bench]
                rows.append({**base, "benchmark": bench, "metric": m["metric"], "value": m["value"],
                             "se_problems": m["se_problems"], "se_generation": m["se_generation"], "k": m["k"],
                             "n_problems": m["n_problems"]})
                values.append(m["value"])
                errors.append(m["se_problems"])
                if choice == "best":
                    counts[(cell["model"], cell["dataset"], cell["method"], bench)] = (m["per_problem_correct"], m["k"])
            rows.append({**base, "benchmark": AVERAGE, "metric": "mean", "value": sum(values) / len(values),
                         "se_problems": combined_se(errors), "se_generation": math.nan, "k": math.nan,
                         "n_problems": math.nan})
    paired = []
    reference = spec.get("reference")
    if reference is not None:
        for block in spec["blocks"]:
            model, dataset = block["model"], block["dataset"]
            for method in spec["methods"]:
                if method == reference:
                    continue
                means, errors = [], []
                for bench in spec["benchmarks"]:
                    ref_counts, k = counts[(model, dataset, reference, bench)]
                    other_counts, other_k = counts[(model, dataset, method, bench)]
                    if other_k != k:
                        raise ValueError(f"{spec['table']}: {method} and {reference} were evaluated with different k "
                                         f"on {bench} ({other_k} vs {k})")
                    diff = paired_difference(ref_counts, other_counts, k)
                    paired.append({"model": model, "dataset": dataset, "reference": reference, "method": method,
                                   "benchmark": bench, "difference": diff.mean, "se": diff.se,
                                   "n_problems": len(ref_counts)})
                    means.append(diff.mean)
                    errors.append(diff.se)
                paired.append({"model": model, "dataset": dataset, "reference": reference, "method": method,
                               "benchmark": AVERAGE, "difference": sum(means) / len(means),
                               "se": combined_se(errors), "n_problems": math.nan})
    return pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(paired, columns=PAIRED_COLUMNS)


# ---------------------------------------------------------------------------------------------- render


def load_published(path: str) -> dict[tuple, float]:
    """(table number, model, dataset, method, benchmark) -> the paper's value."""
    frame = pd.read_csv(path)
    return {(int(r.table), r.model, r.dataset, r.method, r.benchmark): float(r.value) for r in frame.itertuples()}


def heading(spec: dict) -> str:
    """'Table 1: <title>' for a table of the paper, the bare title for a table beyond it."""
    return spec["title"] if spec["number"] is None else f"Table {spec['number']}: {spec['title']}"


def columns_of(spec: dict) -> list[tuple[str, str]]:
    """(benchmark key, header) of the table's columns, the average last."""
    return [(b, spec["benchmark_labels"][b]) for b in spec["benchmarks"]] + [(AVERAGE, AVERAGE_LABEL)]


def layout(spec: dict, cells: pd.DataFrame, published: dict, selection: str) -> list[dict]:
    """One dict per table row in the paper's order: block, method, step, and per column value/se/paper/diff/mark."""
    rows = []
    chosen = cells[cells["selection"] == selection]
    for block in spec["blocks"]:
        block_rows = []
        for method in spec["methods"]:
            found = chosen[(chosen["model"] == block["model"]) & (chosen["dataset"] == block["dataset"])
                           & (chosen["method"] == method)]
            if found.empty:
                raise ValueError(f"{spec['table']}: no cells for {method} on {block['model']}")
            row = {"model": block["model"], "dataset": block["dataset"], "method": method,
                   "step": int(found["step"].iloc[0]), "cells": {}}
            for bench, _ in columns_of(spec):
                line = found[found["benchmark"] == bench].iloc[0]
                paper = published.get((spec["number"], block["model"], block["dataset"], method, bench))
                value = float(line["value"])
                row["cells"][bench] = {"value": value, "se": float(line["se_problems"]), "paper": paper,
                                       "diff": None if paper is None else value - paper, "mark": ""}
            block_rows.append(row)
        mark_best(block_rows, [b for b, _ in columns_of(spec)])
        rows += block_rows
    return rows


def mark_best(rows: list[dict], benchmarks: list[str]) -> None:
    """Bold ('best') the highest displayed value per column and underline ('second') the next distinct one."""
    ranked = [row for row in rows if row["method"] != BASE_MODEL]
    for bench in benchmarks:
        shown = sorted({round(row["cells"][bench]["value"], 1) for row in ranked}, reverse=True)
        for row in ranked:
            value = round(row["cells"][bench]["value"], 1)
            if value == shown[0]:
                row["cells"][bench]["mark"] = "best"
            elif len(shown) > 1 and value == shown[1]:
                row["cells"][bench]["mark"] = "second"


def _comparison(cell: dict) -> str:
    return f"paper {cell['paper']:.1f}, Δ {cell['diff']:+.1f}"


def unpublished_note(spec: dict, rows: list[dict]) -> str | None:
    """One sentence naming the cells the paper has no value for (None when it has them all): said once per table
    instead of in every cell."""
    columns = columns_of(spec)
    missing = {id(row): [header for bench, header in columns if row["cells"][bench]["paper"] is None]
               for row in rows}
    if not any(missing.values()):
        return None
    if all(len(headers) == len(columns) for headers in missing.values()):
        return f"The paper has {NO_PUBLISHED} for any cell of this table."
    parts = []
    for row in rows:
        headers = missing[id(row)]
        if not headers:
            continue
        label = row["method"] if len(spec["blocks"]) == 1 else f"{row['method']} ({row['model']})"
        parts.append(f"{label} (every column)" if len(headers) == len(columns) else f"{label}: {', '.join(headers)}")
    return f"The paper has {NO_PUBLISHED} for: {'; '.join(parts)}."


def write_csv(spec: dict, cells: pd.DataFrame, published: dict, path: str) -> None:
    records = []
    for selection in SELECTIONS:
        for row in layout(spec, cells, published, selection):
            record = {"model": row["model"], "dataset": row["dataset"], "method": row["method"],
                      "checkpoint": selection, "step": row["step"]}
            for bench, header in columns_of(spec):
                cell = row["cells"][bench]
                record.update({header: round(cell["value"], 2), f"{header} se": round(cell["se"], 2),
                               f"{header} paper": cell["paper"],
                               f"{header} diff": None if cell["diff"] is None else round(cell["diff"], 2)})
            records.append(record)
    pd.DataFrame(records).to_csv(path, index=False)


def _paired_rows(spec: dict, paired: pd.DataFrame) -> list[tuple[str, str, dict]]:
    out = []
    for block in spec["blocks"]:
        part = paired[(paired["model"] == block["model"]) & (paired["dataset"] == block["dataset"])]
        for method in spec["methods"]:
            lines = part[part["method"] == method]
            if not lines.empty:
                out.append((block["model"], method, {r.benchmark: (r.difference, r.se) for r in lines.itertuples()}))
    return out


def write_markdown(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, path: str) -> None:
    headers = [h for _, h in columns_of(spec)]
    lines = [f"# {heading(spec)}", ""]
    note = unpublished_note(spec, layout(spec, cells, published, "best"))
    if note:
        lines += [f"_{note}_", ""]
    for selection, caption in (("best", "Best checkpoint (as the paper reports)"), ("last", "Last checkpoint")):
        lines += [f"## {caption}", ""]
        rows = layout(spec, cells, published, selection)
        for block in spec["blocks"]:
            lines += [f"**{block['model']}** (trained on {block['dataset']})", "",
                      "| Method | step | " + " | ".join(headers) + " |", "|---|---:|" + "---:|" * len(headers)]
            for row in rows:
                if (row["model"], row["dataset"]) != (block["model"], block["dataset"]):
                    continue
                texts = []
                for bench, _ in columns_of(spec):
                    cell = row["cells"][bench]
                    value = {"best": f"**{cell['value']:.1f}**", "second": f"<u>{cell['value']:.1f}</u>"}.get(
                        cell["mark"], f"{cell['value']:.1f}")
                    comparison = "" if cell["paper"] is None else f" ({_comparison(cell)})"
                    texts.append(f"{value} ± {cell['se']:.1f}{comparison}")
                lines.append(f"| {row['method']} | {row['step']} | " + " | ".join(texts) + " |")
            lines.append("")
    if spec.get("reference"):
        lines += [f"## Paired differences: {spec['reference']} − method (best checkpoints; mean ± SE over problems)",
                  "", "| Model | Method | " + " | ".join(headers) + " |", "|---|---|" + "---:|" * len(headers)]
        for model, method, diffs in _paired_rows(spec, paired):
            lines.append(f"| {model} | {method} | " + " | ".join(
                f"{diffs[b][0]:+.1f} ± {diffs[b][1]:.1f}" for b, _ in columns_of(spec)) + " |")
        lines.append("")
    write_text_atomic(path, "\n".join(lines))


def _latex_escape(text: str) -> str:
    return text.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")


def write_latex(spec: dict, cells: pd.DataFrame, published: dict, path: str) -> None:
    """The best-checkpoint table, booktabs, best bold and runner-up underlined as the paper typesets it."""
    columns = columns_of(spec)
    rows = layout(spec, cells, published, "best")
    note = unpublished_note(spec, rows)
    note = "" if note is None else " " + _latex_escape(note)
    out = [r"% requires \usepackage{booktabs}",
           r"\begin{table}[t]", r"\centering",
           rf"\caption{{{_latex_escape(spec['title'])} (reproduced $\pm$ s.e.; paper value and difference below)."
           rf"{note}}}",
           r"\resizebox{\linewidth}{!}{%",
           r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
           "Method & " + " & ".join(_latex_escape(h) for _, h in columns) + r" \\", r"\midrule"]
    for i, block in enumerate(spec["blocks"]):
        if len(spec["blocks"]) > 1:
            if i:
                out.append(r"\midrule")
            out += [rf"\multicolumn{{{len(columns) + 1}}}{{c}}{{\textit{{{_latex_escape(block['model'])}}}}} \\",
                    r"\midrule"]
        for row in rows:
            if (row["model"], row["dataset"]) != (block["model"], block["dataset"]):
                continue
            texts = []
            for bench, _ in columns:
                cell = row["cells"][bench]
                value = {"best": rf"\textbf{{{cell['value']:.1f}}}", "second": rf"\underline{{{cell['value']:.1f}}}"}
                value = value.get(cell["mark"], f"{cell['value']:.1f}")
                paper = "" if cell["paper"] is None else rf" {{\tiny({cell['paper']:.1f}, {cell['diff']:+.1f})}}"
                texts.append(rf"{value}{{\scriptsize$\pm${cell['se']:.1f}}}{paper}")
            out.append(_latex_escape(row["method"]) + " & " + " & ".join(texts) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    write_text_atomic(path, "\n".join(out))


STYLE = """<style>
body{font-family:sans-serif;font-size:13px}
table.conspo{border-collapse:collapse;margin:8px 0 18px}
table.conspo th,table.conspo td{border-top:1px solid #ccc;padding:3px 8px;text-align:right}
table.conspo th:first-child,table.conspo td:first-child{text-align:left}
table.conspo tr.block th{text-align:center;font-style:italic;background:#f4f4f4}
.se{color:#555;font-size:11px}.paper{display:block;color:#666;font-size:11px}.nopaper{color:#a60}
</style>"""


def _html_table(spec: dict, rows: list[dict], table_id: str) -> str:
    columns = columns_of(spec)
    out = [f'<table class="conspo" id="{table_id}">', "<thead><tr><th>Method</th><th>step</th>"
           + "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + "</tr></thead><tbody>"]
    for block in spec["blocks"]:
        if len(spec["blocks"]) > 1:
            out.append(f'<tr class="block"><th colspan="{len(columns) + 2}">{html.escape(block["model"])}</th></tr>')
        for row in rows:
            if (row["model"], row["dataset"]) != (block["model"], block["dataset"]):
                continue
            tds = []
            for bench, _ in columns:
                cell = row["cells"][bench]
                value = f"{cell['value']:.1f}"
                value = {"best": f"<b>{value}</b>", "second": f"<u>{value}</u>"}.get(cell["mark"], value)
                note = "" if cell["paper"] is None else f'<span class="paper">{html.escape(_comparison(cell))}</span>'

                tds.append(f'<td data-benchmark="{html.escape(bench)}">{value}'
                           f' <span class="se">± {cell["se"]:.1f}</span>{note}</td>')
            out.append(f'<tr data-method="{html.escape(row["method"])}"><td>{html.escape(row["method"])}</td>'
                       f"<td>{row['step']}</td>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def write_html(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, path: str) -> None:
    title = heading(spec)
    note = unpublished_note(spec, layout(spec, cells, published, "best"))
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{STYLE}"
             f"</head><body>", f"<h2>{html.escape(title)}</h2>",
             "<p>Reproduced value at the best checkpoint ± standard error over problems; below it the paper's "
             "value and the difference where the paper has the cell. <b>Bold</b>: best per column, "
             "<u>underlined</u>: runner-up.</p>",
             *([] if note is None else [f'<p class="nopaper">{html.escape(note)}</p>']),
             _html_table(spec, layout(spec, cells, published, "best"), f"{spec['table']}-best"),
             "<h3>Last checkpoint</h3>",
             _html_table(spec, layout(spec, cells, published, "last"), f"{spec['table']}-last")]
    if spec.get("reference"):
        columns = columns_of(spec)
        parts += [f"<h3>Paired differences: {html.escape(spec['reference'])} − method "
                  "(best checkpoints; mean ± SE over problems)</h3>",
                  f'<table class="conspo" id="{spec["table"]}-paired"><thead><tr><th>Model</th><th>Method</th>'
                  + "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + "</tr></thead><tbody>"]
        for model, method, diffs in _paired_rows(spec, paired):
            parts.append(f"<tr><td>{html.escape(model)}</td><td>{html.escape(method)}</td>" + "".join(
                f"<td>{diffs[b][0]:+.1f} <span class=\"se\">± {diffs[b][1]:.1f}</span></td>" for b, _ in columns)
                + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))


def render(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, prefix: str) -> list[str]:
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    write_csv(spec, cells, published, f"{prefix}.csv")
    write_markdown(spec, cells, paired, published, f"{prefix}.md")
    write_latex(spec, cells, published, f"{prefix}.tex")
    write_html(spec, cells, paired, published, f"{prefix}.html")
    return [f"{prefix}.{ext}" for ext in ("csv", "md", "tex", "html")]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    agg = sub.add_parser("aggregate", help="collect one table's cells and paired differences")
    agg.add_argument("--spec", required=True)
    agg.add_argument("--cells", required=True)
    agg.add_argument("--paired", required=True)
    ren = sub.add_parser("render", help="write one table as CSV, Markdown, LaTeX and HTML")
    ren.add_argument("--spec", required=True)
    ren.add_argument("--cells", required=True)
    ren.add_argument("--paired", required=True)
    ren.add_argument("--published", required=True)
    ren.add_argument("--out-prefix", required=True)
    args = parser.parse_args(argv[1:])
    spec = _read_json(args.spec)
    if args.action == "aggregate":
        cells, paired = aggregate(spec)
        Path(args.cells).parent.mkdir(parents=True, exist_ok=True)
        cells.to_csv(args.cells, index=False)
        paired.to_csv(args.paired, index=False)
        print(f"{spec['table']}: {len(cells)} cells, {len(paired)} paired differences")
        return 0
    cells = pd.read_csv(args.cells, keep_default_na=False, na_values=[""])
    paired = pd.read_csv(args.paired, keep_default_na=False, na_values=[""])
    for path in render(spec, cells, paired, load_published(args.published), args.out_prefix):
        print(path)
    return 0
