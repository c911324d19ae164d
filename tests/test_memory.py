"""conspo.memory: the planner's table for config/paper.yaml (every run within 85% of its GPUs), refusals naming the
key (today's settings before issue 14, a missing GPU memory, an unknown model), shapes and parameter counts, and
its per-phase terms against a measured peak at the real vocabulary."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.bench_memory import PROMPT, measure, planner_estimate
from conspo.cli import main as cli_main
from conspo.memory import GIB, USABLE, hub_shape, plan_estimates, shape_of
from conspo.plan import Plan, PlanError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
R15 = "DeepSeek-R1-Distill-Qwen-1.5B"


def paper_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    validate(config, SCHEMA)
    return config


def test_every_training_run_of_the_paper_fits_its_gpus():
    estimates = plan_estimates(Plan(paper_config()))
    assert len(estimates) == 50  # every run trains on GPUs
    for e in estimates:
        assert e.checkpointing and e.share <= USABLE, (e.run, e.share)
        assert e.update < e.generation  # vLLM sleeps during the update: generation sets the peak
    r15 = next(e for e in estimates if e.run.startswith("deepseek-r1-distill-qwen-1.5b--deepscaler-preview--conspo"))
    assert 8 * GIB < r15.stage < 10 * GIB  # one micro-batch of 36,864 positions, checkpointed


def test_the_settings_before_the_token_budget_are_refused_naming_the_key(tmp_path):
    """Micro-batches of 8 rows padded to the step's longest prompt and response (8 x 9,216 positions), no
    activation checkpointing, the logits of a whole micro-batch at once, vLLM awake through the update."""
    accelerate = yaml.safe_load((ROOT / "config" / "accelerate" / "fsdp_8gpu.yaml").read_text())
    accelerate["fsdp_config"]["fsdp_activation_checkpointing"] = False
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(accelerate))
    config = paper_config()
    config["training"]["train"].update(max_tokens_per_micro_batch=8 * 9216, logit_chunk_tokens=8 * 8192)
    config["training"]["rollout"]["vllm"] = {"enable_sleep_mode": False, "gpu_memory_utilization": 0.3}
    config["models"][R15]["resources"]["train"]["accelerate_config"] = str(tmp_path / "fsdp.yaml")
    with pytest.raises(PlanError) as err:
        Plan(config)
    message = str(err.value)
    assert message.startswith(f"models.{R15}.resources.train.gpu_memory_gib: run deepseek-r1-distill-qwen-1.5b--")
    assert "train.max_tokens_per_micro_batch" in message
    needed = float(message.split("needs an estimated ")[1].split(" GiB")[0])
    assert needed > 300  # the estimate for these settings: 390-460 GiB with 20 B x vocabulary per token


@pytest.mark.parametrize("change,key", [
    (lambda c: c["models"][R15]["resources"]["train"].pop("gpu_memory_gib"),
     f"models.{R15}.resources.train.gpu_memory_gib: required"),
    (lambda c: c["models"][R15].update(id="someone/unknown-model"), f"models.{R15}.id: no shape known"),
    (lambda c: c["models"][R15]["resources"]["train"].update(gpu_memory_gib=16), f"models.{R15}.resources.train"
                                                                                  ".gpu_memory_gib: run"),
])
def test_bad_gpu_resources_are_refused_naming_the_key(change, key):
    config = copy.deepcopy(paper_config())
    change(config)
    with pytest.raises(PlanError, match="^" + key.replace(".", r"\.")):
        Plan(config)


def test_gpu_memory_must_be_positive_in_the_schema():
    config = paper_config()
    config["models"][R15]["resources"]["train"]["gpu_memory_gib"] = 0
    with pytest.raises(Exception, match="gpu_memory_gib"):
        validate(config, SCHEMA)


@pytest.mark.parametrize("model_type,extra", [("qwen2", {}), ("qwen3", {"head_dim": 24}),
                                              ("llama", {"tie_word_embeddings": True})])
def test_parameter_counts_match_the_instantiated_models(tmp_path, model_type, extra):
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=101, **extra)
    model = AutoModelForCausalLM.from_config(config)
    config.save_pretrained(tmp_path)  # a local model folder: the planner reads its config.json
    shape = shape_of(tmp_path)
    assert shape.params == sum(p.numel() for p in model.parameters())  # tied weights counted once


def test_hub_shapes_are_the_paper_models():
    shape = hub_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", ROOT / "config" / "model_shapes.yaml")
    assert (shape.layers, shape.hidden, shape.vocab, shape.tied, shape.qkv_bias) == (28, 1536, 151936, False, True)
    assert round(shape.params / 1e9, 2) == 1.78
    qwen3 = hub_shape("Qwen/Qwen3-4B-Base", ROOT / "config" / "model_shapes.yaml")
    assert qwen3.q_dim == 4096 != qwen3.hidden and qwen3.tied and qwen3.qk_norm
    assert hub_shape("someone/unknown", ROOT / "config" / "model_shapes.yaml") is None


def test_conspo_memory_prints_the_table(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # paths in the workflow config are relative to the repository root
    assert cli_main(["memory", "--config", "config/paper.yaml"]) == 0
    printed = capsys.readouterr().out.strip()
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "--" in line]
    assert len(rows) == 50 and all(line.rstrip().endswith("% |") for line in rows)
    assert printed in (ROOT / "docs" / "training.md").read_text()  # the docs show the planner's current table


def test_the_planner_terms_match_a_measured_peak_at_the_real_vocabulary():
    """A body of 2 small layers under Qwen's 151,936-token vocabulary, 512 response tokens, activation checkpointing
    on: every phase's estimate within 15% of the measured high-water mark (float32 here to stay fast; the bfloat16
    check over larger micro-batches: python -m benchmarks memory)."""
    body = {"hidden": 128, "intermediate": 352, "layers": 2, "heads": 2, "kv_heads": 1}
    measured = measure(path="chunked", rows=1, tokens=512, body=body, dtype="float32", checkpointing=True,
                       chunk=128, repeats=0, threads=1)
    estimate = planner_estimate(body, 512 + PROMPT, True, 128, 4)
    for phase, value in estimate.items():
        assert value == pytest.approx(measured["phases_mib"][phase], rel=0.15), (phase, measured["phases_mib"])
