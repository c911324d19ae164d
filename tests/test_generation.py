"""Generation engines: the Completion contract, seeding, chat templates, in-memory policies, and vLLM on CPU."""

from __future__ import annotations

import pytest
from conftest_models import tiny_model_path  # noqa: F401  (session fixture)

from conspo.data import format_prompt
from conspo.generation import Completion, encode_prompt, make_engine
from conspo.models import build_tiny_tokenizer, load_policy

PROMPTS = [format_prompt("Compute 12+7."), format_prompt("Compute 40-3*5."), format_prompt("Compute 9.")]
SAMPLING = {"n": 3, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12}


def check_completions(completions, tokenizer, n, max_new_tokens):
    assert len(completions) == len(PROMPTS) and all(len(group) == n for group in completions)
    for completion in (c for group in completions for c in group):
        assert isinstance(completion, Completion)
        assert 1 <= len(completion.token_ids) <= max_new_tokens
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        stopped = completion.token_ids[-1] == tokenizer.eos_token_id
        assert completion.finish_reason == ("stop" if stopped else "length")
        assert tokenizer.eos_token_id not in completion.token_ids[:-1]
        if completion.finish_reason == "length":
            assert len(completion.token_ids) == max_new_tokens


def test_transformers_engine_follows_the_completion_contract_and_its_seed(tiny_model_path):
    engine = make_engine("transformers", tiny_model_path, batch_size=4)
    first = engine.generate(PROMPTS, seed=3, **SAMPLING)
    check_completions(first, engine.tokenizer, SAMPLING["n"], SAMPLING["max_new_tokens"])
    assert engine.generate(PROMPTS, seed=3, **SAMPLING) == first
    assert engine.generate(PROMPTS, seed=4, **SAMPLING) != first
    short = engine.generate(PROMPTS, seed=3, **{**SAMPLING, "max_new_tokens": 2})
    assert all(c.finish_reason == "length" and len(c.token_ids) == 2 for group in short for c in group)


def test_transformers_engine_wraps_an_in_memory_policy_and_leaves_its_mode(tiny_model_path):
    model, tokenizer = load_policy(tiny_model_path)
    model.train()
    engine = make_engine("transformers", None, model=model, tokenizer=tokenizer)
    greedy = engine.generate(PROMPTS, n=2, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    assert model.training
    assert all(group[0] == group[1] for group in greedy)
    from_path = make_engine("transformers", tiny_model_path)
    assert from_path.generate(PROMPTS, n=2, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=5) == greedy


def test_transformers_stream_gives_one_completion_per_prompt_the_same_for_the_same_batch(tiny_model_path):
    engine = make_engine("transformers", tiny_model_path, batch_size=2)
    prompts, seeds = PROMPTS * 2, [5, 6, 7, 8, 9, 10]
    batches = list(engine.stream(prompts, seeds, temperature=1.0, top_p=0.95, max_new_tokens=12))
    assert [[index for index, _ in batch] for batch in batches] == [[0, 1], [2, 3], [4, 5]]  # batch by batch
    completions = [completion for batch in batches for _, completion in batch]
    for half in (completions[:3], completions[3:]):
        check_completions([[c] for c in half], engine.tokenizer, 1, 12)
    again = [c for batch in engine.stream(prompts[2:4], seeds[2:4], temperature=1.0, top_p=0.95, max_new_tokens=12)
             for _, c in batch]
    assert again == completions[2:4]  # the same batch (prompts and seeds) gives the same completions
    assert not engine.seeds_per_request


def test_chat_template_is_applied_only_when_asked_and_present():
    tokenizer = build_tiny_tokenizer()
    plain = tokenizer.encode("Compute 1+1.", add_special_tokens=False)
    assert encode_prompt(tokenizer, "Compute 1+1.", chat_template=True) == plain
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    templated = encode_prompt(tokenizer, "Compute 1+1.", chat_template=True)
    assert tokenizer.decode(templated) == "<user>Compute 1+1.<assistant>"
    assert encode_prompt(tokenizer, "Compute 1+1.", chat_template=False) == plain


def test_bad_sampling_settings_and_engines_are_refused(tiny_model_path):
    engine = make_engine("transformers", tiny_model_path)
    with pytest.raises(ValueError):
        engine.generate(PROMPTS, n=0, temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError):
        engine.generate(PROMPTS, n=1, temperature=1.0, top_p=0.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError):
        make_engine("sglang", tiny_model_path)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_on_the_tiny_model(tiny_model_path):
    engine = make_engine("vllm", tiny_model_path, max_model_len=256, enforce_eager=True)
    first = engine.generate(PROMPTS, seed=3, **SAMPLING)
    check_completions(first, engine.tokenizer, SAMPLING["n"], SAMPLING["max_new_tokens"])
    assert engine.generate(PROMPTS, seed=3, **SAMPLING) == first
    assert engine.generate(PROMPTS, seed=4, **SAMPLING) != first
    greedy = engine.generate(PROMPTS, n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    reference = make_engine("transformers", tiny_model_path).generate(
        PROMPTS, n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    assert [group[0].text for group in greedy] == [group[0].text for group in reference]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_stream_hands_back_sequences_as_they_finish_each_by_its_own_seed(tiny_model_path):
    engine = make_engine("vllm", tiny_model_path, max_model_len=256, enforce_eager=True)
    prompts = PROMPTS * 8
    seeds = list(range(100, 100 + len(prompts)))
    sampling = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24}
    batches = list(engine.stream(prompts, seeds, **sampling))
    assert len(batches) > 1 and sorted(i for batch in batches for i, _ in batch) == list(range(len(prompts)))
    whole = {i: c for batch in batches for i, c in batch}
    every_third = list(range(0, len(prompts), 3))
    alone = {every_third[i]: c for batch in engine.stream([prompts[i] for i in every_third],
                                                          [seeds[i] for i in every_third], **sampling)
             for i, c in batch}
    assert alone == {i: whole[i] for i in every_third}  # the same sequence in another batch
    assert engine.seeds_per_request
