"""The tiny-model factory (tokenizer, config, warm start, save/reload, determinism, base accuracy) and SmolLM2."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest_models import smollm2_path, tiny_model_path  # noqa: F401  (session fixtures)

from conspo.data import format_prompt
from conspo.generation import make_engine
from conspo.models import CHARACTERS, build_tiny_model, build_tiny_tokenizer, load_policy, load_tokenizer
from conspo.synthetic import make_tasks
from conspo.verifier import Verifier


def test_tiny_tokenizer_is_character_level_and_round_trips(tmp_path):
    tokenizer = build_tiny_tokenizer()
    text = CHARACTERS + "\\boxed{-12}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("é", add_special_tokens=False) == [tokenizer.unk_token_id]
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.encode(text, add_special_tokens=False) == ids
    assert reloaded.decode(ids + [reloaded.eos_token_id], skip_special_tokens=True) == text


def test_tiny_model_saves_safetensors_and_reloads(tiny_model_path):
    assert (tiny_model_path / "model.safetensors").is_file()
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["head_dim"] == 64
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    model, tokenizer = load_policy(tiny_model_path)
    assert not model.training
    assert tokenizer.decode(tokenizer.encode("Compute 1+2.", add_special_tokens=False)) == "Compute 1+2."
    warm = json.loads((tiny_model_path / "warm_start.json").read_text())
    assert warm["last_loss"] < warm["first_loss"] / 3
    half, _ = load_policy(tiny_model_path, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_tiny_model_is_deterministic_in_its_seed():
    def weights(seed):
        model, _ = build_tiny_model(seed=seed, steps=3, batch_size=8, train_size=64)
        return model.state_dict()

    first, again, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_unboxed_share_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="unboxed_share"):
        build_tiny_model(steps=1, batch_size=2, train_size=4, unboxed_share=1.0)


BOXED = re.compile(r"[-+*/=x0-9, ]+\. \\boxed\{-?\d+\}")
PLAIN = re.compile(r"[-+*/=x0-9, ]+\. The answer is -?\d+\.")


def sample_tiny_benchmarks(model_path, temperature):
    """4 samples on 48 synthetic MATH500 and 48 AIME24 stand-ins: accuracy, share of stops, share of worked solutions
    ending in a box and in plain words, and the accuracy of the boxed ones."""
    engine = make_engine("transformers", model_path, batch_size=256)
    records = make_tasks("math500", 48, seed=7) + make_tasks("aime24", 48, seed=7)
    completions = engine.generate([format_prompt(record["problem"]) for record in records], n=4,
                                  temperature=temperature, top_p=0.95, max_new_tokens=40, seed=0)
    samples = [c for group in completions for c in group]
    with Verifier(workers=1) as verifier:
        golds = [record["answer"] for record in records for _ in range(4)]
        verdicts = verifier.verify([c.text for c in samples], golds)
    boxed = [BOXED.fullmatch(c.text) is not None for c in samples]
    return {"accuracy": sum(v.correct for v in verdicts) / len(samples),
            "stopped": sum(c.finish_reason == "stop" for c in samples) / len(samples),
            "boxed": sum(boxed) / len(samples),
            "plain": sum(PLAIN.fullmatch(c.text) is not None for c in samples) / len(samples),
            "boxed_accuracy": sum(v.correct for v, b in zip(verdicts, boxed) if b) / max(1, sum(boxed))}


def test_tiny_model_ends_its_worked_solutions_in_a_box_or_in_plain_words(tiny_model_path):
    """The warm start's answer-form mix (`unboxed_share` 0.5) survives into sampling at the evaluation temperature:
    the base policy boxes about half its answers, which is what RL on the boxed reward then raises."""
    shares = sample_tiny_benchmarks(tiny_model_path, temperature=0.6)
    print("tiny model at temperature 0.6:", {k: round(v, 3) for k, v in shares.items()})
    assert shares["stopped"] > 0.9 and shares["boxed"] + shares["plain"] > 0.9
    assert 0.3 < shares["boxed"] < 0.7
    assert shares["accuracy"] <= 0.6


def test_tiny_model_base_accuracy_leaves_room_for_rl(tiny_model_path):
    """Sampled at the rollout temperature, the base policy is right often enough that groups of 8 carry signal, and
    far from perfect both in its arithmetic and in its answer form."""
    shares = sample_tiny_benchmarks(tiny_model_path, temperature=1.0)
    print("tiny model at temperature 1.0:", {k: round(v, 3) for k, v in shares.items()})
    assert 0.03 <= shares["accuracy"] <= 0.40
    assert 0.05 <= shares["boxed_accuracy"] <= 0.60


@pytest.mark.slow
def test_smollm2_converts_to_a_checkpoint_transformers_loads(smollm2_path):
    assert (smollm2_path / "model.safetensors").is_file()
    model, tokenizer = load_policy(smollm2_path)
    assert 130e6 < sum(parameter.numel() for parameter in model.parameters()) < 140e6
    assert tokenizer.chat_template is not None
    engine = make_engine("transformers", None, model=model, tokenizer=tokenizer)
    [[completion]] = engine.generate(["What is 2+3? Answer with one number."], n=1, temperature=0.0, top_p=1.0,
                                     max_new_tokens=16, seed=0)
    assert "5" in completion.text


def test_a_finished_smollm2_conversion_is_kept(tmp_path, monkeypatch):
    from conspo import models

    out = tmp_path / "smollm2"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (out / name).write_text("kept")
    monkeypatch.setattr(models, "fetch_smollm2_gguf", lambda cache: pytest.fail("converted again"))
    assert models.convert_smollm2(out) == out and (out / "model.safetensors").read_text() == "kept"
    (out / "tokenizer.json").unlink()  # an interrupted conversion is done again
    with pytest.raises(pytest.fail.Exception, match="converted again"):
        models.convert_smollm2(out)
