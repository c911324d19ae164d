"""CEPO: contrastive evidence policy optimisation (Heakl et al. 2026, arXiv 2605.19436; code ahmedheakl/CEPO).

Two extra no-grad passes of the policy itself score each response with an answer spliced between prompt and response:
r+ = the reference answer, r- = the answer of the group's worst rejected rollout. Tokens that the right answer makes
more likely and the wrong answer less likely get more credit:

    Delta_t = sg( log pi(o_t | q, r+, o_<t) - log pi(o_t | q, r-, o_<t) )
    w_t     = exp( sign(A_i) Delta_t )
    A^_t    = A_i [ (1 - lambda) + lambda clip(w_t, 1 - eps_w, 1 + eps_w) ]
    lambda  = lambda_0 max(0, 1 - step / warmup_steps)                        (linear decay; step 0 = first step)

A^_t replaces A_i in the clipped surrogate -min(rho_t A^_t, clip(rho_t, 1 - 0.2, 1 + 0.28) A^_t), seq-mean-token-mean.
The multiplier in brackets lies in [1 - lambda eps_w, 1 + lambda eps_w]. A group without a rejected rollout has
r- = r+, so Delta_t = 0 and the method is exactly the clipped surrogate there (its rows skip the teacher passes).

Choices where the source leaves room:
- "worst" rejected rollout: the lowest reward among the incorrect rollouts (the source's criterion); with binary
  rewards they all tie, and the tie goes to the lowest likelihood score (1/L) sum_t log pi_old(o_t), the incorrect
  rollout the policy found least plausible (the source keeps the first in its batch order).
- r-: the content of that rollout's last \\boxed{...}; without one, its first 50 characters; if that is blank, r+
  (as in the source). The splice is `answer_hint` with the answer filled in, " {answer}" in the source.
- sign(A_i) is taken from the advantages this objective gives the prepared rewards (the trainer stores the same).
- Once lambda reaches 0 the teacher passes are skipped (the source does too) and the weights are exactly 1; rows
  with A_i = 0 (groups whose rewards are all equal) skip them too, their weights do not change the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from baselines.grpo import GRPO
from conspo.batch import RolloutBatch, SequenceInfo
from conspo.losses import group_structure, sequence_scores
from conspo.objective import RolloutContext, check_parameter, register_objective
from conspo.verifier import last_boxed

WEIGHTS = "cepo_weights"  # batch.extras key: the per-token multiplier of A_i, [n, T]
ADVANTAGE_SIGN = "cepo_advantage_sign"  # batch.extras key: sign(A_i) the weights were built with, [n]


def worst_rejected(batch: RolloutBatch) -> Tensor:
    """Per row, the row index of its group's worst rejected rollout (lowest reward, then lowest likelihood score);
    -1 for rows of groups with no rejected rollout."""
    n = len(batch)
    score = sequence_scores(batch.old_logprobs.float(), batch.response_mask).cpu()
    order = torch.argsort(score, stable=True)
    order = order[torch.argsort(batch.rewards.cpu()[order], stable=True)]  # by reward, ties by likelihood score
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    groups = group_structure(batch.correct.cpu(), batch.group_ids.cpu())
    key = torch.where(batch.correct.cpu(), n, rank)  # correct rollouts never count as rejected
    first = torch.full((len(groups.ids),), n).scatter_reduce(0, groups.index, key, "amin")
    worst = torch.where(first < n, order[first.clamp(max=n - 1)], -1)
    return worst[groups.index]


def rejected_answer(response: str, fallback: str) -> str:
    """r-: the last boxed answer of a rejected response, else its first 50 characters, else `fallback`."""
    answer = last_boxed(response)
    if answer is None:
        answer = response[:50]
    return answer if answer.strip() else fallback


def spliced_prompts(batch: RolloutBatch, hints: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask with each row's hint tokens appended after its prompt: [q, r]."""
    rows = zip(batch.prompt_ids.cpu(), batch.prompt_mask.cpu(), hints)
    prompts = [ids[mask].tolist() + hint for ids, mask, hint in rows]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=batch.prompt_ids.dtype)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, tokens in enumerate(prompts):
        if tokens:
            ids[row, width - len(tokens):] = torch.tensor(tokens)
            mask[row, width - len(tokens):] = True
    return ids.to(batch.prompt_ids.device), mask.to(batch.prompt_mask.device)


def teacher_logprobs(batch: RolloutBatch, hints: list[list[int]], context: RolloutContext) -> Tensor:
    """log pi(o_t | q, r, o_<t) for every response token, [n, T], with no gradient."""
    prompt_ids, prompt_mask = spliced_prompts(batch, hints)
    parts = []
    with torch.no_grad():
        for idx, mb in batch.micro_batches(context.micro_batch_size):
            idx = idx.to(prompt_ids.device)
            logprobs = context.response_logprobs(prompt_ids[idx], prompt_mask[idx], mb.response_ids, mb.response_mask)
            parts.append(logprobs)
    return torch.cat(parts).detach().float()


@register_objective("cepo")
@dataclass
class CEPO(GRPO):
    clip_eps_high: float = 0.28  # the released recipe's clip-higher (clip_eps_low stays 0.2)
    lambda_init: float = 1.0  # lambda_0 (../shared/METHODS.md; the released Geo3k script uses 0.5)
    warmup_steps: int = 25  # steps over which lambda decays linearly to 0 (released script)
    eps_w: float = 0.2  # clip of the evidence weight w_t
    answer_hint: str = " {answer}"  # the text spliced between prompt and response

    def __post_init__(self):
        super().__post_init__()
        check_parameter("lambda_init", self.lambda_init, 0 <= self.lambda_init <= 1, "in [0, 1]")
        check_parameter("warmup_steps", self.warmup_steps, self.warmup_steps > 0, "> 0")
        check_parameter("eps_w", self.eps_w, 0 <= self.eps_w < 1, "in [0, 1)")
        check_parameter("answer_hint", self.answer_hint, "{answer}" in self.answer_hint,
                        "a text holding {answer} (where the gold answer is spliced in)")
        self.prepare_metrics: dict[str, float] = {}

    def evidence_lambda(self, step: int) -> float:
        return self.lambda_init * max(0.0, 1.0 - step / self.warmup_steps)

    def hint_tokens(self, answer: str, tokenizer) -> list[int]:
        return tokenizer.encode(self.answer_hint.format(answer=answer), add_special_tokens=False)

    def prepare(self, batch: RolloutBatch, context: RolloutContext) -> RolloutBatch:
        lam = self.evidence_lambda(context.step)
        sign = torch.sign(self.advantages(batch.rewards, batch.group_ids))
        delta = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=batch.response_ids.device)
        worst = worst_rejected(batch)
        # rows that need the teacher passes: a rejected rollout in the group (else r- = r+) and A_i != 0
        contrasted = torch.nonzero((worst >= 0) & (sign.cpu() != 0)).flatten()
        if lam > 0 and len(contrasted):
            sub = batch.select(contrasted)
            positive = [self.hint_tokens(context.answers[i], context.tokenizer) for i in contrasted.tolist()]
            negative = [
                self.hint_tokens(rejected_answer(context.responses[worst[i]], context.answers[i]), context.tokenizer)
                for i in contrasted.tolist()
            ]
            evidence = teacher_logprobs(sub, positive, context) - teacher_logprobs(sub, negative, context)  # Delta_t
            delta[contrasted.to(delta.device)] = torch.where(sub.response_mask, evidence.to(delta.device), 0.0)
        w = torch.exp(sign.to(delta.device)[:, None] * delta)
        multiplier = (1 - lam) + lam * torch.clamp(w, 1 - self.eps_w, 1 + self.eps_w)
        extras = {**batch.extras, WEIGHTS: multiplier, ADVANTAGE_SIGN: sign}
        self.prepare_metrics = {
            "cepo/lambda": lam,
            "cepo/delta_mean": float(delta[batch.response_mask].mean()),
            "cepo/weight_mean": float(multiplier[batch.response_mask].mean()),
        }
        return replace(batch, extras=extras)

    def token_advantages(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        """A^_t = A_i * multiplier_t (the multiplier from `prepare`)."""
        if WEIGHTS not in batch.extras:
            raise ValueError("cepo: the batch has no evidence weights; the trainer must call objective.prepare first")
        if not torch.equal(torch.sign(batch.advantages).cpu(), batch.extras[ADVANTAGE_SIGN].cpu()):
            raise ValueError("cepo: batch.advantages differ in sign from objective.advantages(prepared rewards)")
        return batch.advantages[:, None].to(logprobs.dtype) * batch.extras[WEIGHTS].to(logprobs.dtype)

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        value, metrics = super().loss(terms, info, progress)
        return value, {**metrics, **self.prepare_metrics}
