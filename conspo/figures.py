"""`conspo figures`: Figure 1, Figure 2 and the training curves of a run (matplotlib, Agg backend).

    conspo figures figure1 --spec specs/figure1.json --out figures/figure1.png
    conspo figures figure2 --spec specs/figure2.json --out figures/figure2.png
    conspo figures curves --metrics runs/RUN/metrics.jsonl --title RUN --out figures/curves/RUN.png

`conspo tables render` draws each table's verdict plot with `draw_verdicts`.

Figure 1, left: the per-rollout gradient coefficients dJ/ds_i of one group against the score gap between its
positive and negative rollouts. ConSPO's come from autograd through the shared core (`conspo_group_objective`,
Eq. 15); GRPO's are A_i / G from its group advantages (`group_advantages`; Proposition 1: the clipped surrogate is
sqrt(p(1-p)) (mean_pos s+ - mean_neg s-), whose coefficients are A_i / G). Right: the training reward of the two runs
(their metrics.jsonl; with several seeds each seed thin and their mean bold). Figure 2: the average score over the
benchmarks at the best checkpoints against the swept value, one panel per sweep: the mean over seeds, error bars one
seed-aware standard error (conspo.significance). The verdict plot: per column of a table, the reference method's
difference to each other row with its family-wise interval, coloured by verdict, beside the paper's claimed
difference. Every PNG carries the plotted data as JSON in its
"conspo-data" text chunk, so what a figure shows can be checked without reading pixels.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .names import AVERAGE  # noqa: E402
from .significance import BETTER, NOT_DISTINGUISHABLE, WORSE, Term, estimate  # noqa: E402

DATA_KEY = "conspo-data"
CURVES = (("reward", "mean reward"), ("response_length", "mean response length (tokens)"),
          ("pass_rate", "fraction of correct rollouts"))


def read_jsonl(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save(fig, data: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={DATA_KEY: json.dumps(data)})
    plt.close(fig)


def read_data(path: str) -> dict:
    """The plotted data stored in a PNG written by this module."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[DATA_KEY])


# ---------------------------------------------------------------------------------------------- Figure 1


def gradient_coefficients(gaps: list[float], *, n_pos: int, n_neg: int, tau: float, margin: float = 0.0,
                          negative_score: float = 0.0) -> dict[str, list[float]]:
    """dJ/ds of one positive and one negative rollout of a group of n_pos positives (score negative_score + gap)
    and n_neg negatives (score negative_score), for ConSPO (autograd through Eq. 15) and GRPO (A_i / G)."""
    import torch  # only Figure 1 needs it: the curves, Figure 2 and the tables' verdict plots do not pay for its import

    from .losses import conspo_group_objective, group_advantages

    correct = torch.tensor([True] * n_pos + [False] * n_neg)
    group_ids = torch.zeros(n_pos + n_neg, dtype=torch.long)
    conspo_pos, conspo_neg = [], []
    for gap in gaps:
        scores = torch.tensor([negative_score + gap] * n_pos + [negative_score] * n_neg, dtype=torch.float64,
                              requires_grad=True)
        conspo_group_objective(scores, correct, group_ids, tau, margin).sum().backward()
        conspo_pos.append(float(scores.grad[0]))
        conspo_neg.append(float(scores.grad[n_pos]))
    advantages = group_advantages(correct.float(), group_ids, "population")
    size = n_pos + n_neg
    grpo_pos, grpo_neg = float(advantages[0]) / size, float(advantages[n_pos]) / size
    return {"gap": list(gaps), "conspo_positive": conspo_pos, "conspo_negative": conspo_neg,
            "grpo_positive": [grpo_pos] * len(gaps), "grpo_negative": [grpo_neg] * len(gaps)}


def reward_curve(metrics_logs: list[str]) -> dict[str, list]:
    """Training reward per step of each seed's run and their mean (over the steps every run has logged)."""
    per_seed = [[r["reward"] for r in read_jsonl(path)] for path in metrics_logs]
    steps = [r["step"] for r in read_jsonl(metrics_logs[0])][:min(map(len, per_seed))]
    mean = [sum(rewards[i] for rewards in per_seed) / len(per_seed) for i in range(len(steps))]
    return {"step": steps, "reward": mean, "per_seed": per_seed}


def draw_figure1(spec: dict, *, n_pos: int = 4, n_neg: int = 4):
    grpo, conspo = spec["points"]
    tau = float(spec.get("tau", 10.0))
    span = 4 * tau
    gaps = [-span + 2 * span * i / 80 for i in range(81)]
    coefficients = gradient_coefficients(gaps, n_pos=n_pos, n_neg=n_neg, tau=tau)
    curves = {p["method"]: reward_curve(p["metrics_logs"]) for p in (grpo, conspo)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(gaps, coefficients["conspo_positive"], color="C3", label=f"{conspo['method']}: positive")
    left.plot(gaps, coefficients["conspo_negative"], color="C3", linestyle="--", label=f"{conspo['method']}: negative")
    left.plot(gaps, coefficients["grpo_positive"], color="C0", label=f"{grpo['method']}: positive")
    left.plot(gaps, coefficients["grpo_negative"], color="C0", linestyle="--", label=f"{grpo['method']}: negative")
    left.axhline(0.0, color="0.7", linewidth=0.8)
    left.set_xlabel("score gap s⁺ − s⁻")
    left.set_ylabel("gradient coefficient ∂J/∂sᵢ")
    left.set_title(f"Per-rollout coefficients (G = {n_pos + n_neg}, N⁺ = {n_pos}, τ = {tau:g})")
    left.legend(fontsize=8)
    for point, color in ((grpo, "C0"), (conspo, "C3")):
        curve = curves[point["method"]]
        if len(curve["per_seed"]) > 1:
            for rewards in curve["per_seed"]:
                right.plot(curve["step"], rewards[:len(curve["step"])], color=color, alpha=0.3, linewidth=0.8,
                           label="_seed")
        label = point["method"] + (f" (mean of {len(curve['per_seed'])} seeds)" if len(curve["per_seed"]) > 1 else "")
        right.plot(curve["step"], curve["reward"], color=color, label=label)
    right.set_xlabel("training step")
    right.set_ylabel("training reward")
    right.set_title(f"Training reward ({spec['model']}, {spec['dataset']})")
    right.legend(fontsize=8)
    fig.suptitle(spec["title"])
    return fig, {"coefficients": coefficients, "rewards": curves, "tau": tau, "n_pos": n_pos, "n_neg": n_neg}


# ---------------------------------------------------------------------------------------------- Figure 2


def average_score(selections: list[dict], benchmarks: list[str]) -> tuple[float, float, list[float]]:
    """Mean over benchmarks at the best checkpoints, averaged over seeds, its seed-aware standard error
    (conspo.significance: with one seed, sqrt(sum se^2) / n over problems), and each seed's value."""
    rates = [np.array([s["best"]["benchmarks"][b]["per_problem_correct"] for s in selections], dtype=float)
             / selections[0]["best"]["benchmarks"][b]["k"] for b in benchmarks]
    result = estimate([Term(rates)])
    per_seed = 100.0 * sum(r.mean(-1) for r in rates) / len(rates)
    return float(result.value), float(result.se), [float(v) for v in per_seed]


def draw_figure2(spec: dict):
    sweeps: dict[str, list[dict]] = {}
    for point in spec["points"]:
        sweeps.setdefault(point["sweep"], []).append(point)
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.6), squeeze=False)
    data = {}
    for ax, (name, points) in zip(axes[0], sweeps.items()):
        points = sorted(points, key=lambda p: p["value"])
        scores = [average_score([json.loads(Path(path).read_text()) for path in p["selections"]], spec["benchmarks"])
                  for p in points]
        x = list(range(len(points)))
        ax.errorbar(x, [s[0] for s in scores], yerr=[s[1] for s in scores], marker="o", capsize=3, color="C3")
        default = spec.get("defaults", {}).get(points[0]["param"])
        for i, p in enumerate(points):
            if default is not None and math.isclose(p["value"], default):
                ax.plot([i], [scores[i][0]], marker="*", markersize=13, color="C1", zorder=3)
        ax.set_xticks(x, [f"{p['value']:g}" for p in points])
        ax.set_xlabel(points[0]["label"])
        ax.set_ylabel("average score (%)")
        ax.set_title(f"{points[0]['label']} ({points[0]['param']})")
        data[name] = {"param": points[0]["param"], "values": [p["value"] for p in points],
                      "mean": [s[0] for s in scores], "se": [s[1] for s in scores],
                      "per_seed": [s[2] for s in scores], "runs": [p["runs"] for p in points]}
    fig.suptitle(spec["title"])
    fig.tight_layout()
    return fig, {"panels": data, "benchmarks": spec["benchmarks"]}


# ---------------------------------------------------------------------------------------------- verdict plot

VERDICT_COLOURS = {BETTER: "#1a7f37", WORSE: "#c0392b", NOT_DISTINGUISHABLE: "0.45"}


def draw_verdicts(spec: dict, rows: list[dict], columns: list[tuple[str, str]]):
    """A forest plot of a table's verdicts (conspo.tables.verdict_rows): one panel per column, one line per
    comparison, the interval coloured by verdict, the paper's claimed difference as an open diamond."""
    comparisons = list(dict.fromkeys((row["model"], row["method"]) for row in rows))
    if not comparisons:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{spec['title']}: no reference method, nothing compared", ha="center", va="center")
        return fig, {"rows": [], "reference": spec.get("reference")}
    several_blocks = len(spec["blocks"]) > 1
    labels = [f"vs {method}" + (f" ({model})" if several_blocks else "") for model, method in comparisons]
    by_key = {(row["model"], row["method"], row["benchmark"]): row for row in rows}
    fig, axes = plt.subplots(1, len(columns), figsize=(1.9 * len(columns) + 2.0, 0.42 * len(comparisons) + 1.9),
                             sharey=True, squeeze=False)
    for ax, (bench, header) in zip(axes[0], columns):
        panel = [by_key[(model, method, bench)] for model, method in comparisons]
        colours = [VERDICT_COLOURS[row["verdict"]] for row in panel]
        ys = list(range(len(panel)))
        ax.hlines(ys, [row["low"] for row in panel], [row["high"] for row in panel], colors=colours, linewidth=1.6)
        ax.scatter([row["difference"] for row in panel], ys, c=colours, s=18, zorder=3)
        claimed = [(row["claimed"], y) for row, y in zip(panel, ys) if row["claimed"] is not None]
        if claimed:
            ax.scatter(*zip(*claimed), marker="D", s=36, facecolors="none", edgecolors="C1", zorder=4)
        ax.axvline(0.0, color="0.6", linewidth=0.8)
        ax.set_title(header, fontsize=10, fontweight="bold" if bench == AVERAGE else "normal")
        ax.set_xlabel("difference (points)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(comparisons)), labels)
    axes[0][0].set_ylim(len(comparisons) - 0.5, -0.5)
    first = rows[0]
    handles = [plt.Line2D([], [], color=colour, marker="o", label=f"{spec['reference']} {verdict}")
               for verdict, colour in VERDICT_COLOURS.items()]
    handles.append(plt.Line2D([], [], color="C1", marker="D", markerfacecolor="none", linestyle="none",
                              label="the paper's claimed difference"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    note = "" if all(row["seeds_measured"] for row in rows) else "\none seed per run: run-to-run variance not measured"
    fig.suptitle(f"{spec['title']}\n{spec['reference']} − method at the best checkpoints: {first['level']:.0%} "
                 f"intervals, Bonferroni over the {first['comparisons']} comparison(s) of each column{note}",
                 fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.1, right=0.99, wspace=0.15, bottom=0.9 / height, top=1 - 0.9 / height)
    data = {"reference": spec["reference"], "level": first["level"], "comparisons": first["comparisons"],
            "columns": [header for _, header in columns],
            "rows": [{key: by_key[(model, method, bench)][key] for key in
                      ("model", "method", "benchmark", "difference", "low", "high", "verdict", "claimed",
                       "seeds_measured")} for model, method in comparisons for bench, _ in columns]}
    return fig, data


# ---------------------------------------------------------------------------------------------- training curves


def draw_curves(metrics_log: str, title: str):
    records = read_jsonl(metrics_log)
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(12, 3.3))
    data = {"step": steps}
    for ax, (key, label) in zip(axes, CURVES):
        values = [r[key] for r in records]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        data[key] = values
    fig.suptitle(title)
    fig.tight_layout()
    return fig, data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    for name in ("figure1", "figure2"):
        one = sub.add_parser(name)
        one.add_argument("--spec", required=True)
        one.add_argument("--out", required=True)
    curves = sub.add_parser("curves", help="reward, response length and pass rate of one run")
    curves.add_argument("--metrics", required=True, help="the run's metrics.jsonl")
    curves.add_argument("--title", required=True)
    curves.add_argument("--out", required=True)
    args = parser.parse_args(argv[1:])
    if args.figure == "curves":
        fig, data = draw_curves(args.metrics, args.title)
    else:
        spec = json.loads(Path(args.spec).read_text())
        fig, data = (draw_figure1 if args.figure == "figure1" else draw_figure2)(spec)
    save(fig, data, args.out)
    print(args.out)
    return 0
