"""Peak memory and time of the policy's log-prob + entropy + backward stage at the real vocabulary, full logits vs
conspo.forward; computed positions per real token of the micro-batching; the planner's terms against measurement.

Stage measured: one micro-batch of `rows x tokens` response tokens after a short prompt, through a Qwen2 with
Qwen's vocabulary (151,936) and a small body: per-token log-probs with gradient, entropies without, and the backward
of a weighted sum of the log-probs into every parameter. Two paths:
- full logits (the trainer before conspo.forward: `full_logits_logprobs`): left-padded prompts with an attention
  mask, float32 logits of every response position over the whole vocabulary, log-softmax for the log-probs and
  again for the entropies;
- conspo.forward.PolicyForward: rows packed without a mask, the head applied to the response tokens in chunks of
  `--chunk` tokens, each chunk's logits recomputed in backward.
Peak memory is the process's high-water mark (VmHWM) after a reset (/proc/self/clear_refs) less the resident size
just before the stage, each measurement in a fresh process after one warm-up call (CPU; float32 unless --dtype).
The full-logits path needs ~3 MB per token at this vocabulary, so it is measured up to 1,024 tokens and its
per-token slope, fitted by least squares, extrapolated to 8,192; the chunked path is measured up to 8,192.

The padding part: computed positions (rows x their micro-batch's widest row, summed) per real token for a rank's
step batch drawn from an R1-like length distribution (responses lognormal with median 3,500 tokens, 10% cut at
8,192; prompts as stated in the record), whole-batch padding vs token-budget micro-batches.

The planner part: conspo.memory's estimate of the same stage (activations, head chunk, gradients) against the
measured peak at bfloat16 on a scaled body (--body), with and without activation checkpointing.

    python -m benchmarks memory [--tokens-full 256 512 1024] [--tokens-new 256 ... 8192] [--chunk 512]
                                [--planner] [--records DIR]
"""

from __future__ import annotations

import torch

from conspo.batch import RolloutBatch


def full_logits_logprobs(model, mb: RolloutBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs [n, T] (with gradient) and entropies [n, T] (without) as the trainer computed them before
    conspo.forward: left-padded prompts with an attention mask, logits of every response position over the whole
    vocabulary in float32 (float64 for a float64 model), one log-softmax for the log-probs and one for the entropies."""
    ids = torch.cat([mb.prompt_ids, mb.response_ids], dim=1)
    mask = torch.cat([mb.prompt_mask, mb.response_mask], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    t = mb.response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t + 1, use_cache=False)
    logits = out.logits[:, :-1].to(torch.promote_types(out.logits.dtype, torch.float32))
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logprobs = torch.log_softmax(logits, -1).gather(-1, mb.response_ids[..., None]).squeeze(-1)
    with torch.no_grad():
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy
