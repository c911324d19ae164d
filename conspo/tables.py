"""`conspo tables`: Tables 1-6 in the paper's layout, with the paper's numbers beside the reproduced ones, and tables
beyond the paper (no `number`: every cell says it has no published counterpart) in the same layout.

    conspo tables aggregate --spec specs/table1.json --cells tables/table1/cells.csv --paired tables/table1/paired.csv
    conspo tables render --spec specs/table1.json --cells ... --paired ... --published config/published_tables.csv \
        --out-prefix tables/table1/table1        # -> .csv .md .tex .html and -verdicts.png

`aggregate` reads the selection of every run (conspo select; one run per seed) and the base models' metrics files
and writes the cells in long form (one line per row x benchmark x checkpoint choice, the average over the table's
benchmarks included): the mean over seeds, its standard error combining problems and seeds, both parts, and each
seed's value (conspo.significance). It also writes the paired comparison of the reference method (ConSPO) against
every other row, per benchmark and on the average, for every checkpoint choice: difference, interval and verdict.

`render` lays the cells out as the paper does (rows = methods, columns = benchmarks + Avg., one block per model):
each cell shows the reproduced value at the best checkpoint ± its standard error, and the paper's value with
the difference where the paper has the cell; one note under the title names the cells it does not have (all of them
for the embedded default and tables beyond the paper); in HTML each cell's hover text gives every seed's value. Per
block and column the best value is bold and the runner-up underlined (on the displayed one-decimal values, ties
share the mark; base-model rows are not ranked, nor are rows whose run learned nothing, and a tie of every ranked
row marks none). A row whose training run learned nothing (conspo.learning: most steps without a reward signal, or
weights that never moved; any of its seeds) carries the mark †, and a note under the table says why. The last
checkpoint's table (and the validated one when the config names a validation benchmark) and the verdicts follow;
the verdict plot shows the intervals beside the paper's claimed differences.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .learning import NO_SIGNAL_MARK, learned_nothing
from .names import AVERAGE, BASE_MODEL
from .significance import LEVEL, Term, compare, estimate

CELL_COLUMNS = ["number", "model", "dataset", "method", "runs", "selection", "step", "benchmark", "metric", "value",
                "se", "se_problems", "se_seeds", "se_generation", "seeds", "per_seed", "k", "n_problems", "no_signal"]
PAIRED_COLUMNS = ["model", "dataset", "selection", "reference", "method", "benchmark", "difference", "se",
                  "se_problems", "se_seeds", "df", "low", "high", "level", "comparisons", "verdict", "seeds_measured",
                  "n_problems"]
AVERAGE_LABEL = "Avg."
NO_PUBLISHED = "no published value"
SEPARATOR = ";"  # between the per-seed entries of a CSV field


def selections(spec: dict) -> tuple[str, ...]:
    """The checkpoint choices of a table: best (as the paper), last, and validated when the config names a
    validation benchmark (conspo select)."""
    return ("best", "last") + (("validated",) if spec.get("validation") else ())


# ---------------------------------------------------------------------------------------------- aggregate


def _read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def cell_checkpoints(cell: dict, choices: tuple[str, ...]) -> list[dict[str, dict]]:
    """Per seed, {'best': {step, benchmarks: {name: metrics}}, 'last': ..., ...} of one table row (a base model:
    one entry, step 0 for every choice)."""
    if not cell["runs"]:
        metrics = {b: _read_json(path) for b, path in cell["metrics"].items()}
        return [{choice: {"step": 0, "benchmarks": metrics} for choice in choices}]
    seeds = []
    for path in cell["selections"]:
        selection = _read_json(path)
        missing = [choice for choice in choices if choice not in selection]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} checkpoint (select it with --validation)")
        seeds.append({choice: selection[choice] for choice in choices})
    return seeds


def no_signal(cell: dict) -> str:
    """Why a table row's training runs learned nothing ('' if each of them learned something), from their
    done.json (conspo.learning)."""
    reasons = []
    for seed, path in zip(cell.get("seeds", []), cell.get("trained", [])):
        reason = learned_nothing(_read_json(path))
        if reason:
            reasons.append(f"seed {seed}: {reason}" if len(cell["trained"]) > 1 else reason)
    return "; ".join(reasons)


def per_seed_rates(spec: dict, cell: dict, per_seed: list[dict], bench: str) -> tuple[np.ndarray, dict]:
    """[S, N] per-problem rates c/k of one benchmark over a row's seeds, and the first seed's metrics."""
    found = []
    for chosen in per_seed:
        if bench not in chosen["benchmarks"]:
            raise ValueError(f"{spec['table']}: {cell['method']} on {cell['model']} has no {bench} evaluation")
        found.append(chosen["benchmarks"][bench])
    if len({(m["k"], len(m["per_problem_correct"])) for m in found}) != 1:
        raise ValueError(f"{spec['table']}: the seeds of {cell['method']} on {cell['model']} were evaluated on {bench} "
                         "with different k or problems")
    return np.array([m["per_problem_correct"] for m in found], dtype=float) / found[0]["k"], found[0]


def _joined(values) -> str:
    return SEPARATOR.join(f"{value:.4f}" if isinstance(value, float) else str(value) for value in values)


def aggregate(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long-form cells of one table (mean over seeds, seed-aware errors, per-seed values) and the verdicts of its
    reference method against every other row (conspo.significance)."""
    choices = selections(spec)
    rows, terms = [], {}
    for cell in spec["cells"]:
        checkpoints = cell_checkpoints(cell, choices)
        silent = no_signal(cell)
        for choice in choices:
            chosen = [seed[choice] for seed in checkpoints]
            base = {"number": spec["number"], "model": cell["model"], "dataset": cell["dataset"],
                    "method": cell["method"], "runs": _joined(cell["runs"]), "selection": choice,
                    "step": _joined(c["step"] for c in chosen), "seeds": len(chosen), "no_signal": silent}
            rates = []
            for bench in spec["benchmarks"]:
                bench_rates, first = per_seed_rates(spec, cell, chosen, bench)
                rates.append(bench_rates)
                result = estimate([Term([bench_rates], trained=bool(cell["runs"]))])
                generation = [c["benchmarks"][bench]["se_generation"] for c in chosen]
                se_generation = math.sqrt(sum(se ** 2 for se in generation)) / len(generation)
                rows.append({**base, "benchmark": bench, "metric": first["metric"], "value": float(result.value),
                             "se": float(result.se), "se_problems": float(result.se_problems),
                             "se_seeds": float(result.se_seeds), "se_generation": se_generation,
                             "per_seed": _joined(100.0 * bench_rates.mean(-1)), "k": first["k"],
                             "n_problems": bench_rates.shape[1]})
            term = Term(rates, trained=bool(cell["runs"]))
            terms[(cell["model"], cell["dataset"], cell["method"], choice)] = term
            result = estimate([term])
            rows.append({**base, "benchmark": AVERAGE, "metric": "mean", "value": float(result.value),
                         "se": float(result.se), "se_problems": float(result.se_problems),
                         "se_seeds": float(result.se_seeds), "se_generation": math.nan,
                         "per_seed": _joined(100.0 * sum(r.mean(-1) for r in rates) / len(rates)),
                         "k": math.nan, "n_problems": math.nan})
    return pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(verdicts(spec, terms), columns=PAIRED_COLUMNS)


def verdicts(spec: dict, terms: dict) -> list[dict]:
    """Reference - other per column, at LEVEL family-wise over the column's comparisons (every other row of every
    block: Bonferroni), for every checkpoint choice."""
    reference = spec.get("reference")
    if reference is None:
        return []
    others = [m for m in spec["methods"] if m != reference]
    comparisons = len(others) * len(spec["blocks"])
    keys, pairs = [], []
    for choice in selections(spec):
        for block in spec["blocks"]:
            model, dataset = block["model"], block["dataset"]
            ours = terms[(model, dataset, reference, choice)]
            for method in others:
                theirs = terms[(model, dataset, method, choice)]
                for index, bench in enumerate([*spec["benchmarks"], AVERAGE]):
                    if bench == AVERAGE:
                        pair = (ours, theirs)
                    else:
                        pair = tuple(Term([t.rates[index]], t.sign, t.trained) for t in (ours, theirs))
                        if pair[0].rates[0].shape[-1] != pair[1].rates[0].shape[-1]:
                            raise ValueError(f"{spec['table']}: {method} and {reference} were evaluated on different "
                                             f"problems of {bench}")
                    keys.append({"model": model, "dataset": dataset, "selection": choice, "reference": reference,
                                 "method": method, "benchmark": bench,
                                 "n_problems": pair[0].rates[0].shape[-1] if bench != AVERAGE else math.nan})
                    pairs.append(pair)
    return [{**key, **result._asdict(), "level": LEVEL, "comparisons": comparisons}
            for key, result in zip(keys, compare(pairs, comparisons))]


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


CAPTIONS = {"best": "Best checkpoint (as the paper reports: chosen on these benchmarks)", "last": "Last checkpoint",
            "validated": "Checkpoint chosen on the validation benchmark {validation}"}


def caption(spec: dict, selection: str) -> str:
    return CAPTIONS[selection].format(validation=spec.get("validation"))


def layout(spec: dict, cells: pd.DataFrame, published: dict, selection: str) -> list[dict]:
    """One dict per table row in the paper's order: block, method, steps, seeds, and per column value, errors,
    per-seed values, paper/diff and mark."""
    rows = []
    lines = {(line["model"], line["dataset"], line["method"], line["benchmark"]): line
             for line in cells[cells["selection"] == selection].to_dict("records")}
    seeds_of = {(c["model"], c["dataset"], c["method"]): c["seeds"] for c in spec["cells"]}
    for block in spec["blocks"]:
        block_rows = []
        for method in spec["methods"]:
            key = (block["model"], block["dataset"], method)
            if (*key, AVERAGE) not in lines:
                raise ValueError(f"{spec['table']}: no cells for {method} on {block['model']}")
            silent = lines[(*key, AVERAGE)].get("no_signal")
            row = {"model": block["model"], "dataset": block["dataset"], "method": method,
                   "step": str(lines[(*key, AVERAGE)]["step"]), "seeds": seeds_of[key], "cells": {},
                   "no_signal": "" if not isinstance(silent, str) else silent}
            for bench, _ in columns_of(spec):
                line = lines[(*key, bench)]
                paper = published.get((spec["number"], block["model"], block["dataset"], method, bench))
                value = float(line["value"])
                row["cells"][bench] = {"value": value, "se": float(line["se"]),
                                       "se_problems": float(line["se_problems"]), "se_seeds": float(line["se_seeds"]),
                                       "per_seed": [float(v) for v in str(line["per_seed"]).split(SEPARATOR)],
                                       "paper": paper, "diff": None if paper is None else value - paper, "mark": ""}
            block_rows.append(row)
        mark_best(block_rows, [b for b, _ in columns_of(spec)])
        rows += block_rows
    return rows


def mark_best(rows: list[dict], benchmarks: list[str]) -> None:
    """Bold ('best') the highest displayed value per column and underline ('second') the next distinct one, among
    the trained rows whose run learned something; a column where all of them tie (more than one) marks none."""
    ranked = [row for row in rows if row["method"] != BASE_MODEL and not row["no_signal"]]
    for bench in benchmarks:
        shown = sorted({round(row["cells"][bench]["value"], 1) for row in ranked}, reverse=True)
        if len(shown) == 1 and len(ranked) > 1:
            continue
        for row in ranked:
            value = round(row["cells"][bench]["value"], 1)
            if value == shown[0]:
                row["cells"][bench]["mark"] = "best"
            elif len(shown) > 1 and value == shown[1]:
                row["cells"][bench]["mark"] = "second"


def shown_value(row: dict, cell: dict, bold: str, underline: str) -> str:
    """A cell's value with its rank mark (`bold`/`underline`: format strings) and † for a run that learned
    nothing."""
    value = {"best": bold, "second": underline}.get(cell["mark"], "{}").format(f"{cell['value']:.1f}")
    return value + (NO_SIGNAL_MARK if row["no_signal"] else "")


def no_signal_notes(rows: list[dict]) -> list[str]:
    """One sentence per row whose run learned nothing: which, and why."""
    return [f"{NO_SIGNAL_MARK} {row['method']} on {row['model']} learned nothing, so it is not ranked: "
            f"{row['no_signal']}." for row in rows if row["no_signal"]]


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


def seed_note(row: dict, cell: dict) -> str:
    """What the ± of a cell holds and, over several seeds, each seed's value (the HTML hover text)."""
    if row["method"] == BASE_MODEL:
        return f"base model, one evaluation: ± {cell['se']:.1f} over problems"
    if row["no_signal"]:
        return f"learned nothing: {row['no_signal']}"
    if len(row["seeds"]) == 1:
        return (f"seed {row['seeds'][0]} only: ± {cell['se']:.1f} over problems; run-to-run variance not measured "
                "(one seed)")
    values = ", ".join(f"{v:.1f} (seed {seed})" for v, seed in zip(cell["per_seed"], row["seeds"]))
    return (f"mean of {len(row['seeds'])} seeds: {values}; ± {cell['se']:.1f} = problems {cell['se_problems']:.1f} "
            f"and seeds {cell['se_seeds']:.1f} combined")


def write_csv(spec: dict, cells: pd.DataFrame, published: dict, path: str) -> None:
    records = []
    for selection in selections(spec):
        for row in layout(spec, cells, published, selection):
            record = {"model": row["model"], "dataset": row["dataset"], "method": row["method"],
                      "checkpoint": selection, "step": row["step"], "seeds": SEPARATOR.join(map(str, row["seeds"]))}
            for bench, header in columns_of(spec):
                cell = row["cells"][bench]
                record.update({header: round(cell["value"], 2), f"{header} se": round(cell["se"], 2),
                               f"{header} per seed": SEPARATOR.join(f"{v:.2f}" for v in cell["per_seed"]),
                               f"{header} paper": cell["paper"],
                               f"{header} diff": None if cell["diff"] is None else round(cell["diff"], 2)})
            record["learned nothing"] = row["no_signal"]  # why the run's cells are not ranked ('' if it learned)
            records.append(record)
    write_text_atomic(path, pd.DataFrame(records).to_csv(index=False))


def claimed_difference(spec: dict, published: dict, model: str, dataset: str, method: str, bench: str):
    """The paper's reference - method difference in a cell, None where it lacks either value."""
    ours = published.get((spec["number"], model, dataset, spec["reference"], bench))
    theirs = published.get((spec["number"], model, dataset, method, bench))
    return None if ours is None or theirs is None else ours - theirs


def verdict_rows(spec: dict, paired: pd.DataFrame, published: dict, selection: str) -> list[dict]:
    """The verdicts of one checkpoint choice in table order, each with the paper's claimed difference."""
    chosen = paired[paired["selection"] == selection]
    rows = []
    for block in spec["blocks"]:
        for method in spec["methods"]:
            lines = chosen[(chosen["model"] == block["model"]) & (chosen["dataset"] == block["dataset"])
                           & (chosen["method"] == method)]
            for line in lines.to_dict("records"):
                line["claimed"] = claimed_difference(spec, published, block["model"], block["dataset"], method,
                                                     line["benchmark"])
                rows.append(line)
    return rows


def comparisons(row: dict) -> str:
    return f"{row['comparisons']} comparison" + ("" if row["comparisons"] == 1 else "s")


def seeds_sentence(spec: dict) -> str:
    """What a cell's value and ± are, from the number of seeds of the table's trained rows."""
    counts = sorted({len(cell["seeds"]) for cell in spec["cells"] if cell["runs"]})
    if counts == [1]:
        return ("Each cell: one training run (one seed) ± its standard error over problems; run-to-run variance is "
                "not measured.")
    return (f"Each cell: the mean over {' or '.join(map(str, counts))} training runs (seeds) ± its standard error "
            "over problems and seeds; each seed's value in the CSV (and the HTML's hover text).")


def verdict_heading(spec: dict, rows: list[dict], selection: str) -> str:
    first = rows[0]
    text = (f"{spec['reference']} − method ({selection} checkpoints): mean difference and its "
            f"{first['level']:.0%} interval, family-wise over the {comparisons(first)} of each column "
            f"(Bonferroni; Student t, Welch-Satterthwaite df); verdict for {spec['reference']}")
    if not all(row["seeds_measured"] for row in rows):
        text += (". One seed per run: run-to-run variance is not measured, the intervals hold problem and sampling "
                 "noise only")
    return text


def _verdict_text(row: dict) -> str:
    return f"{row['difference']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}] {row['verdict']}"


def _verdict_table(spec: dict, rows: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    table: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        table.setdefault((row["model"], row["method"]), {})[row["benchmark"]] = row
    return table


def write_markdown(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, path: str) -> None:
    headers = [h for _, h in columns_of(spec)]
    lines = [f"# {heading(spec)}", "", seeds_sentence(spec), ""]
    note = unpublished_note(spec, layout(spec, cells, published, "best"))
    if note:
        lines += [f"_{note}_", ""]
    for selection in selections(spec):
        lines += [f"## {caption(spec, selection)}", ""]
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
                    comparison = "" if cell["paper"] is None else f" ({_comparison(cell)})"
                    texts.append(f"{shown_value(row, cell, '**{}**', '<u>{}</u>')} ± {cell['se']:.1f}{comparison}")
                lines.append(f"| {row['method']} | {row['step']} | " + " | ".join(texts) + " |")
            lines.append("")
        notes = no_signal_notes(rows)
        lines += [*notes, ""] if notes else []
    for selection in ("best", "validated"):
        rows = verdict_rows(spec, paired, published, selection) if spec.get("reference") else []
        if not rows:
            continue
        lines += [f"## Paired comparison: {verdict_heading(spec, rows, selection)}", "",
                  "| Model | Method | " + " | ".join(headers) + " |", "|---|---|" + "---:|" * len(headers)]
        for (model, method), by_bench in _verdict_table(spec, rows).items():
            lines.append(f"| {model} | {method} | " + " | ".join(
                _verdict_text(by_bench[b]) for b, _ in columns_of(spec)) + " |")
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
                value = shown_value(row, cell, r"\textbf{{{}}}", r"\underline{{{}}}").replace(NO_SIGNAL_MARK,
                                                                                               r"$^\dagger$")
                paper = "" if cell["paper"] is None else rf" {{\tiny({cell['paper']:.1f}, {cell['diff']:+.1f})}}"
                texts.append(rf"{value}{{\scriptsize$\pm${cell['se']:.1f}}}{paper}")
            out.append(_latex_escape(row["method"]) + " & " + " & ".join(texts) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}", r"\end{table}",
            *(f"% {note}" for note in no_signal_notes(rows)), ""]
    write_text_atomic(path, "\n".join(out))


STYLE = """<style>
body{font-family:sans-serif;font-size:13px}
table.conspo{border-collapse:collapse;margin:8px 0 18px}
table.conspo th,table.conspo td{border-top:1px solid #ccc;padding:3px 8px;text-align:right}
table.conspo th:first-child,table.conspo td:first-child{text-align:left}
table.conspo tr.block th{text-align:center;font-style:italic;background:#f4f4f4}
.se{color:#555;font-size:11px}.paper{display:block;color:#666;font-size:11px}.nopaper{color:#a60}
.nosignal{color:#a60}.better{color:#1a7f37}.worse{color:#c0392b}.interval{display:block;color:#555;font-size:11px}
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
                value = shown_value(row, cell, "<b>{}</b>", "<u>{}</u>")
                note = "" if cell["paper"] is None else f'<span class="paper">{html.escape(_comparison(cell))}</span>'
                per_seed = SEPARATOR.join(f"{v:.2f}" for v in cell["per_seed"])
                tds.append(f'<td data-benchmark="{html.escape(bench)}" data-per-seed="{per_seed}" '
                           f'title="{html.escape(seed_note(row, cell))}">{value}'
                           f' <span class="se">± {cell["se"]:.1f}</span>{note}</td>')
            out.append(f'<tr data-method="{html.escape(row["method"])}" data-no-signal="{bool(row["no_signal"])}">'
                       f'<td>{html.escape(row["method"])}</td>'
                       f"<td>{html.escape(row['step'])}</td>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="nosignal">{html.escape(note)}</p>' for note in no_signal_notes(rows)]
    return "\n".join(out)


def _html_verdicts(spec: dict, rows: list[dict], table_id: str) -> str:
    columns = columns_of(spec)
    out = [f'<table class="conspo" id="{table_id}"><thead><tr><th>Model</th><th>Method</th>'
           + "".join(f"<th>{html.escape(h)}</th>" for _, h in columns) + "</tr></thead><tbody>"]
    for (model, method), by_bench in _verdict_table(spec, rows).items():
        tds = []
        for bench, _ in columns:
            row = by_bench[bench]
            claim = "" if row["claimed"] is None else f"; paper {row['claimed']:+.1f}"
            tds.append(f'<td data-benchmark="{html.escape(bench)}" data-verdict="{row["verdict"]}">'
                       f'{row["difference"]:+.1f} <span class="{row["verdict"].split()[0]}">{row["verdict"]}</span>'
                       f'<span class="interval">[{row["low"]:+.1f}, {row["high"]:+.1f}]{html.escape(claim)}</span>'
                       "</td>")
        out.append(f"<tr><td>{html.escape(model)}</td><td>{html.escape(method)}</td>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def write_html(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, path: str) -> None:
    title = heading(spec)
    note = unpublished_note(spec, layout(spec, cells, published, "best"))
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{STYLE}"
             f"</head><body>", f"<h2>{html.escape(title)}</h2>",
             f"<p>Reproduced value at the best checkpoint. {html.escape(seeds_sentence(spec))} Below it the paper's "
             "value and the difference where the paper has the cell. <b>Bold</b>: best per column, "
             f"<u>underlined</u>: runner-up; {NO_SIGNAL_MARK}: the run learned nothing (not ranked; the note under "
             "the table says why).</p>",
             *([] if note is None else [f'<p class="nopaper">{html.escape(note)}</p>']),
             _html_table(spec, layout(spec, cells, published, "best"), f"{spec['table']}-best")]
    for selection in selections(spec)[1:]:
        parts += [f"<h3>{html.escape(caption(spec, selection))}</h3>",
                  _html_table(spec, layout(spec, cells, published, selection), f"{spec['table']}-{selection}")]
    for selection, suffix in (("best", ""), ("validated", "-validated")):
        rows = verdict_rows(spec, paired, published, selection) if spec.get("reference") else []
        if rows:
            parts += [f"<h3>Paired comparison: {html.escape(verdict_heading(spec, rows, selection))}</h3>",
                      _html_verdicts(spec, rows, f"{spec['table']}-paired{suffix}")]
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))


def render(spec: dict, cells: pd.DataFrame, paired: pd.DataFrame, published: dict, prefix: str) -> list[str]:
    """The table as CSV, Markdown, LaTeX and HTML, and the verdict plot (`{prefix}-verdicts.png`)."""
    from .figures import draw_verdicts, save

    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    write_csv(spec, cells, published, f"{prefix}.csv")
    write_markdown(spec, cells, paired, published, f"{prefix}.md")
    write_latex(spec, cells, published, f"{prefix}.tex")
    write_html(spec, cells, paired, published, f"{prefix}.html")
    rows = verdict_rows(spec, paired, published, "best") if spec.get("reference") else []
    save(*draw_verdicts(spec, rows, columns_of(spec)), f"{prefix}-verdicts.png")
    return [f"{prefix}.{ext}" for ext in ("csv", "md", "tex", "html")] + [f"{prefix}-verdicts.png"]


def read_cells(path: str) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""],
                       dtype={"runs": str, "step": str, "per_seed": str, "no_signal": str})


def read_paired(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return frame.astype({"seeds_measured": bool}) if len(frame) else frame


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    agg = sub.add_parser("aggregate", help="collect one table's cells and paired comparisons")
    agg.add_argument("--spec", required=True)
    agg.add_argument("--cells", required=True)
    agg.add_argument("--paired", required=True)
    ren = sub.add_parser("render", help="write one table as CSV, Markdown, LaTeX and HTML, and its verdict plot")
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
        write_text_atomic(args.cells, cells.to_csv(index=False))
        write_text_atomic(args.paired, paired.to_csv(index=False))
        print(f"{spec['table']}: {len(cells)} cells, {len(paired)} paired comparisons")
        return 0
    cells, paired = read_cells(args.cells), read_paired(args.paired)
    for path in render(spec, cells, paired, load_published(args.published), args.out_prefix):
        print(path)
    return 0
