"""Figures 1-2 and training curves: the plotted data and axes read back from the figures and the PNG files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conspo import figures
from conspo.losses import contrastive_probabilities


def write_metrics_log(path: Path, rewards: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": i + 1, "reward": r, "pass_rate": r / 2, "response_length": 100 + i})
                            + "\n" for i, r in enumerate(rewards)))


N_PROBLEMS = 100


def write_selection(path: Path, solved: dict[str, int]) -> None:
    """A run's selection whose best checkpoint solves `solved[b]` of 100 problems of benchmark b (pass@1)."""
    best = {b: {"value": float(n), "k": 1, "per_problem_correct": [1] * n + [0] * (N_PROBLEMS - n)}
            for b, n in solved.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"best": {"step": 2, "benchmarks": best}, "last": {"step": 2, "benchmarks": best}}))


def se_over_problems(percent: float) -> float:
    """Standard error (points) of a pass@1 score over 100 problems."""
    p = percent / 100
    return 100 * math.sqrt(p * (1 - p) * N_PROBLEMS / (N_PROBLEMS - 1) / N_PROBLEMS)


def test_gradient_coefficients_come_from_the_shared_core():
    gaps = [-20.0, 0.0, 5.0, 40.0]
    tau, n_pos, n_neg = 10.0, 2, 6
    c = figures.gradient_coefficients(gaps, n_pos=n_pos, n_neg=n_neg, tau=tau)
    for gap, pos, neg in zip(gaps, c["conspo_positive"], c["conspo_negative"]):
        scores = torch.tensor([gap] * n_pos + [0.0] * n_neg, dtype=torch.float64)
        correct = torch.tensor([True] * n_pos + [False] * n_neg)
        p_pos = float(contrastive_probabilities(scores, correct, torch.zeros(8, dtype=torch.long), tau)[0])
        assert pos == pytest.approx((1 - p_pos) / n_pos)  # Lemma 2, Eq. 12
        assert pos * n_pos + neg * n_neg == pytest.approx(0.0, abs=1e-12)  # the group's coefficients sum to 0
    assert c["conspo_positive"][0] > c["conspo_positive"][-1] > 0  # attenuated once well separated
    # GRPO: A_i / G, the same whatever the gap (p = 1/4: A+ = sqrt(3), A- = -1/sqrt(3))
    assert c["grpo_positive"] == pytest.approx([math.sqrt(3) / 8] * 4, rel=1e-5)
    assert c["grpo_negative"] == pytest.approx([-1 / math.sqrt(3) / 8] * 4, rel=1e-5)


def test_figure1_panels_and_data(tmp_path):
    write_metrics_log(tmp_path / "grpo.jsonl", [0.1, 0.2, 0.25])
    write_metrics_log(tmp_path / "conspo.jsonl", [0.1, 0.3, 0.4])
    spec = {"title": "Figure 1", "model": "tiny-a", "dataset": "D", "tau": 10.0, "points": [
        {"method": "GRPO", "metrics_logs": [str(tmp_path / "grpo.jsonl")]},
        {"method": "ConSPO", "metrics_logs": [str(tmp_path / "conspo.jsonl")]}]}
    out = tmp_path / "figure1.png"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    assert figures.main(["figures", "figure1", "--spec", str(spec_path), "--out", str(out)]) == 0
    fig, _ = figures.draw_figure1(spec)
    left, right = fig.axes
    assert left.get_xlabel() == "score gap s⁺ − s⁻" and "∂J/∂s" in left.get_ylabel()
    assert [line.get_label() for line in left.get_lines()][:4] == [
        "ConSPO: positive", "ConSPO: negative", "GRPO: positive", "GRPO: negative"]
    assert right.get_ylabel() == "training reward"
    rewards = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
    assert rewards == {"GRPO": [0.1, 0.2, 0.25], "ConSPO": [0.1, 0.3, 0.4]}
    data = figures.read_data(str(out))
    assert data["rewards"]["ConSPO"]["step"] == [1, 2, 3]
    assert len(data["coefficients"]["gap"]) == 81 and data["tau"] == 10.0


def test_figure1_with_several_seeds_draws_each_and_their_mean(tmp_path):
    for name, rewards in (("grpo", [0.1, 0.2, 0.3]), ("grpo-1", [0.3, 0.4, 0.5, 0.6]), ("conspo", [0.2, 0.2, 0.2])):
        write_metrics_log(tmp_path / f"{name}.jsonl", rewards)
    spec = {"title": "Figure 1", "model": "tiny-a", "dataset": "D", "tau": 10.0, "points": [
        {"method": "GRPO", "metrics_logs": [str(tmp_path / "grpo.jsonl"), str(tmp_path / "grpo-1.jsonl")]},
        {"method": "ConSPO", "metrics_logs": [str(tmp_path / "conspo.jsonl")]}]}
    fig, data = figures.draw_figure1(spec)
    lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[1].get_lines()}
    assert lines["GRPO (mean of 2 seeds)"] == pytest.approx([0.2, 0.3, 0.4])  # over the steps both runs logged
    assert lines["ConSPO"] == [0.2, 0.2, 0.2]
    assert data["rewards"]["GRPO"]["per_seed"] == [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5, 0.6]]


def test_figure2_three_panels_with_error_bars(tmp_path):
    benchmarks = ["AIME24", "MATH500"]
    points = []
    for sweep, label, param, values in (("tau", "τ", "tau", [1, 10, 20]), ("M", "M", "margin_max", [0, 0.01]),
                                        ("alpha", "α", "margin_warmup", [0.3, 1.0])):
        for index, value in enumerate(values):
            path = tmp_path / f"{sweep}{value}.json"
            write_selection(path, {"AIME24": 10 + index, "MATH500": 30 + index})
            points.append({"sweep": sweep, "label": label, "param": param, "value": value,
                           "runs": [f"r-{sweep}{value}"], "selections": [str(path)]})
    spec = {"title": "Figure 2", "benchmarks": benchmarks, "points": points,
            "defaults": {"tau": 10.0, "margin_max": 0.01, "margin_warmup": 0.3}}
    fig, data = figures.draw_figure2(spec)
    assert len(fig.axes) == 3
    assert [ax.get_xlabel() for ax in fig.axes] == ["τ", "M", "α"]
    assert all(ax.get_ylabel() == "average score (%)" for ax in fig.axes)
    tau_axis = fig.axes[0]
    assert [t.get_text() for t in tau_axis.get_xticklabels()] == ["1", "10", "20"]
    assert list(tau_axis.get_lines()[0].get_ydata()) == pytest.approx([20.0, 21.0, 22.0])  # mean of 10+i and 30+i
    # one seed: the standard error over problems, the two benchmarks' combined as sqrt(se1^2 + se2^2) / 2
    assert data["panels"]["tau"]["se"] == pytest.approx(
        [math.hypot(se_over_problems(10 + i), se_over_problems(30 + i)) / 2 for i in range(3)])
    assert len(tau_axis.collections) == 1  # the error bars
    out = tmp_path / "figure2.png"
    figures.save(fig, data, str(out))
    assert figures.read_data(str(out))["panels"]["alpha"]["values"] == [0.3, 1.0]


def test_figure2_averages_the_seeds_of_a_point_and_widens_its_error(tmp_path):
    """Two seeds solving 20 and 30 of 100 problems (the first ones): the point is their mean, 25, and its error adds
    the spread of the two runs' values to the error over problems."""
    paths = []
    for seed, solved in ((0, 20), (1, 30)):
        paths.append(tmp_path / f"seed{seed}.json")
        write_selection(paths[-1], {"AIME24": solved})
    one = tmp_path / "one.json"
    write_selection(one, {"AIME24": 25})
    spec = {"title": "Figure 2", "benchmarks": ["AIME24"], "defaults": {}, "points": [
        {"sweep": "tau", "label": "τ", "param": "tau", "value": 5, "runs": ["a", "a-1"],
         "selections": [str(p) for p in paths]},
        {"sweep": "tau", "label": "τ", "param": "tau", "value": 10, "runs": ["b"], "selections": [str(one)]}]}
    _, data = figures.draw_figure2(spec)
    panel = data["panels"]["tau"]
    assert panel["mean"] == pytest.approx([25.0, 25.0]) and panel["per_seed"] == [[20.0, 30.0], [25.0]]
    # seed term var(0.2, 0.3) / 2; problem term: the variance over problems of the seed means (20 problems at 1,
    # 10 at 0.5, 70 at 0: 16.25 / 99) less the runs' own noise (residual mean square 4.5 / 99, over 2 seeds), / 100
    seed_term, problem_term = 0.005 / 2, (16.25 / 99 - 4.5 / 99 / 2) / 100
    assert panel["se"][0] == pytest.approx(100 * math.sqrt(seed_term + problem_term))
    assert panel["se"][1] == pytest.approx(se_over_problems(25))  # one seed: over problems only


def test_training_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_metrics_log(log, [0.0, 0.5, 1.0, 0.75])
    out = tmp_path / "curves.png"
    assert figures.main(["figures", "curves", "--metrics", str(log), "--title", "run", "--out", str(out)]) == 0
    data = figures.read_data(str(out))
    assert data["reward"] == [0.0, 0.5, 1.0, 0.75] and data["pass_rate"] == [0.0, 0.25, 0.5, 0.375]
    assert data["response_length"] == [100, 101, 102, 103] and data["step"] == [1, 2, 3, 4]
    fig, _ = figures.draw_curves(str(log), "run")
    assert [ax.get_ylabel() for ax in fig.axes] == [label for _, label in figures.CURVES]
