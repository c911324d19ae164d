"""Rollouts for the trainer: sampling G responses per prompt with the live policy and padding them into tensors
(the policy's forward passes over the rows are conspo.forward's).

Two samplers behind one interface (`sample(prompt_ids, texts, group_size, seed) -> responses per prompt`, then
`sync_weights()` after every optimizer step):
- `TransformersSampler`: conspo.generation's transformers engine around the in-memory policy (CPU; nothing to sync).
  Prompts are generated in chunks of `prompts_per_generation`, each chunk seeded from (run seed, step, round, chunk
  position in the step), so rollouts do not depend on the number of ranks or on where a resumed run restarted.
- `VLLMSampler`: TRL's `trl.generation.VLLMGeneration` (GPU; colocate or server mode), which pushes the policy's
  weights into vLLM (FSDP/DeepSpeed-aware gathering) on `sync_weights()`. vLLM's sampling is not replayable, so a
  resumed GPU run continues from the same state but does not redraw the same rollouts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .generation import encode_prompt, make_engine


def chunk_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


class TransformersSampler:
    def __init__(self, model, tokenizer, *, chat_template: bool, temperature: float, top_p: float,
                 max_new_tokens: int, prompts_per_generation: int | None, group_size: int):
        rows = (prompts_per_generation or 1 << 16) * group_size
        self.engine = make_engine("transformers", None, model=model, tokenizer=tokenizer,
                                  chat_template=chat_template, batch_size=rows)
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        self.prompts_per_generation = prompts_per_generation

    def sample(self, texts: list[str], prompt_ids: list[list[int]], group_size: int, seed_parts: tuple[int, ...],
               first_position: int) -> list[list[list[int]]]:
        """Response token ids, `group_size` per prompt. `first_position`: the step-wide position of texts[0]."""
        chunk = self.prompts_per_generation or len(texts)
        out = []
        for start in range(0, len(texts), chunk):
            seed = chunk_seed(*seed_parts, first_position + start)
            groups = self.engine.generate(texts[start:start + chunk], n=group_size, seed=seed, **self.sampling)
            out.extend([list(c.token_ids) for c in group] for group in groups)
        return out

    def sync_weights(self) -> None:
        """The engine samples from the live policy: nothing to copy."""


class VLLMSampler:
    def __init__(self, model, tokenizer, accelerator, *, vllm, temperature: float, top_p: float, max_new_tokens: int,
                 max_model_length: int, trust_remote_code: bool):
        from trl.generation.vllm_generation import VLLMGeneration

        self.generation = VLLMGeneration(
            model=model, accelerator=accelerator, processing_class=tokenizer, mode=vllm.mode,
            server_host=vllm.server_host, server_port=vllm.server_port, server_timeout=vllm.server_timeout,
            tensor_parallel_size=vllm.tensor_parallel_size, gpu_memory_utilization=vllm.gpu_memory_utilization,
            max_model_length=max_model_length, enable_sleep_mode=vllm.enable_sleep_mode,
            trust_remote_code=trust_remote_code, temperature=temperature, top_p=top_p,
            max_completion_length=max_new_tokens)

    def sample(self, texts: list[str], prompt_ids: list[list[int]], group_size: int, seed_parts: tuple[int, ...],
               first_position: int) -> list[list[list[int]]]:
        rows = [ids for ids in prompt_ids for _ in range(group_size)]  # TRL expects each prompt G times
        _, completions, _, _ = self.generation.generate(rows, None, group_size)
        return [[list(c) for c in completions[i * group_size:(i + 1) * group_size]] for i in range(len(texts))]

    def sync_weights(self) -> None:
        self.generation.sync_weights()


def make_sampler(cfg, model, tokenizer, accelerator):
    r = cfg.rollout
    if r.engine == "transformers":
        return TransformersSampler(model, tokenizer, chat_template=cfg.model.chat_template, temperature=r.temperature,
                                   top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                                   prompts_per_generation=r.prompts_per_generation, group_size=r.group_size)
    return VLLMSampler(model, tokenizer, accelerator, vllm=r.vllm, temperature=r.temperature, top_p=r.top_p,
                       max_new_tokens=r.max_new_tokens, max_model_length=r.max_prompt_tokens + r.max_new_tokens,
                       trust_remote_code=cfg.model.trust_remote_code)


def prompt_token_ids(tokenizer, text: str, chat_template: bool) -> list[int]:
    return encode_prompt(tokenizer, text, chat_template)


def pad(rows: list[list[int]], value: int, left: bool) -> tuple[Tensor, Tensor]:
    """Rows padded to one width (left- or right-aligned) and the mask of real tokens."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = True
    return ids, mask
