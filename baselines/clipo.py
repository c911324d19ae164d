"""CLIPO: contrastive learning in policy optimisation (Cui et al. 2026, arXiv 2603.10101; code Qwen-Applications/CLIPO).

A small contrastive head reads the policy's final-layer hidden states; the policy gets its signal only through the
rewards, then a base method (GRPO by default) runs unchanged on the shaped rewards.

    h_i   = (1/L_i) sum_t H_{i,t}                        mean over response tokens of the final-layer hidden state
    z_i   = W h_i / ||W h_i||                            bias-free linear head, L2-normalised, W: [dim, H]
    L_i   = -log( exp(z_i.z_p(i) / T) / sum_{a in g(i), a != i} exp(z_i.z_a / T) )     InfoNCE, per anchor i
    r_i  <- r_i + max(-lambda L_i, -max_penalty)         correct anchors only (1 - lambda L_i, floored at 0.5)

Anchors are the correct rollouts of groups with at least two correct and one incorrect rollout; p(i) is one other
correct rollout of the group drawn uniformly, the denominator runs over every other rollout of the group (the
positive included), T = 0.05. L_i is in nats and not normalised further (the source's "individual loss"); L_i >= 0,
so a correct rollout keeps a reward in [1 - max_penalty, 1] while incorrect ones keep theirs.
Each `prepare` makes one AdamW step of the head on the mean of L_i over the anchors; the rewards use the L_i of the
same forward pass, before that step (as the source does). The source reads h_i off its rollout engine; here one
no-grad pass of the policy over the step batch computes it. With several ranks, h, correctness and group ids are
all-gathered, so every rank makes the same head update on the whole step batch (as the source's single controller
does) and shapes its own rows.
Head warm-up: the released recipe trains the head for `trainer.critic_warmup` steps (58 on MATH, 14 on GSM8K) while
the policy is frozen. Here the policy is never frozen: during the first `head_warmup_steps` steps the head trains and
the rewards stay unshaped, so the policy trains with the base method meanwhile and every method gets the same number
of policy updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from conspo.batch import RolloutBatch, SequenceInfo
from conspo.losses import group_structure
from conspo.objective import (Objective, ParameterError, RolloutContext, build_objective, check_parameter,
                              register_objective)


def pooled_response_hidden(batch: RolloutBatch, context: RolloutContext) -> Tensor:
    """h_i: the policy's final-layer hidden states averaged over each rollout's response tokens, [n, H] float32,
    without gradient, `context.micro_batch_size` rows per forward pass."""
    parts = []
    with torch.no_grad():
        for _, mb in batch.micro_batches(context.micro_batch_size):
            hidden = context.response_hidden(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
            mask = mb.response_mask.to(hidden.device, torch.float32)[..., None]
            parts.append((hidden.float() * mask).sum(1) / mask.sum(1))
    return torch.cat(parts)


def sample_positives(correct: Tensor, group_ids: Tensor, generator: torch.Generator) -> Tensor:
    """p(i): for every row, a uniformly drawn other correct rollout of its group (row i itself if there is none)."""
    n = len(correct)
    candidate = correct[None, :] & (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(n, dtype=torch.bool)
    noise = torch.rand(n, n, generator=generator)
    drawn = torch.where(candidate, noise, torch.full_like(noise, -1.0)).argmax(-1)
    return torch.where(candidate.any(-1), drawn, torch.arange(n))


def infonce_losses(embeddings: Tensor, positives: Tensor, group_ids: Tensor, temperature: float) -> Tensor:
    """L_i = -z_i.z_p(i)/T + log sum_{a in g(i), a != i} exp(z_i.z_a/T) for every row (meaningful for anchors)."""
    n = embeddings.shape[0]
    logits = embeddings @ embeddings.T / temperature
    others = (group_ids[:, None] == group_ids[None, :]) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
    denominator = torch.logsumexp(logits.masked_fill(~others, -torch.inf), dim=-1)
    return denominator - logits.gather(1, positives[:, None]).squeeze(1)


@register_objective("clipo")
@dataclass
class CLIPO(Objective):
    base_method: str = "grpo"  # any registered objective; it runs on the shaped rewards
    base_params: dict = field(default_factory=dict)
    head_dim: int = 2048  # con_lm_head_output_size: 2048 in the MATH recipe, 512 in the GSM8K one
    temperature: float = 0.05  # T
    reward_lambda: float = 0.2  # lambda
    max_penalty: float = 0.5  # the source clamps -lambda L_i at -0.5: a correct reward stays >= 0.5
    head_lr: float = 1e-3  # AdamW
    head_weight_decay: float = 0.01
    head_warmup_steps: int = 58  # steps with the head training and the rewards unshaped (MATH recipe)
    seed: int = 0  # head initialisation and positive sampling

    def __post_init__(self):
        check_parameter("head_dim", self.head_dim, self.head_dim > 0, "> 0")
        check_parameter("temperature", self.temperature, self.temperature > 0, "> 0")
        check_parameter("reward_lambda", self.reward_lambda, self.reward_lambda >= 0, ">= 0")
        check_parameter("max_penalty", self.max_penalty, 0 <= self.max_penalty < 1,
                        "in [0, 1) (correct rewards stay > 0)")
        check_parameter("head_lr", self.head_lr, self.head_lr > 0, "> 0")
        check_parameter("head_weight_decay", self.head_weight_decay, self.head_weight_decay >= 0, ">= 0")
        check_parameter("head_warmup_steps", self.head_warmup_steps, self.head_warmup_steps >= 0, ">= 0")
        check_parameter("seed", self.seed, self.seed >= 0, ">= 0")
        try:
            self.base = build_objective(self.base_method, self.base_params)
        except KeyError as err:  # an unknown method, or a parameter its method does not have
            key = "base_method" if str(err.args[0]).startswith("unknown method") else "base_params"
            raise ParameterError(f"{key}: {err.args[0]}") from None
        except ParameterError as err:
            raise ParameterError(f"base_params.{err}") from None
        self.head: nn.Linear | None = None  # built at the first batch, when the hidden size is known
        self.head_optimizer: torch.optim.AdamW | None = None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.restored_head: dict | None = None
        self.prepare_metrics: dict[str, float] = {}

    # ----------------------------------------------------------------- the base method does the policy loss
    @property
    def n_terms(self) -> int:  # type: ignore[override]
        return self.base.n_terms

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return self.base.linear

    @property
    def needs_reference(self) -> bool:
        return self.base.needs_reference

    def advantages(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        return self.base.advantages(rewards, group_ids)

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        return self.base.sequence_terms(batch, logprobs)

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        value, metrics = self.base.loss(terms, info, progress)
        return value, {**metrics, **self.prepare_metrics}

    # ----------------------------------------------------------------- the contrastive head and the shaping
    def _build_head(self, hidden_size: int, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = nn.Linear(hidden_size, self.head_dim, bias=False)
        self.head.to(device)
        self.head_optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.head_lr,
                                                weight_decay=self.head_weight_decay)
        if self.restored_head is not None:
            self.head.load_state_dict(self.restored_head["head"])
            self.head_optimizer.load_state_dict(self.restored_head["optimizer"])
            self.restored_head = None

    def prepare(self, batch: RolloutBatch, context: RolloutContext) -> RolloutBatch:
        hidden = pooled_response_hidden(batch, context)  # h_i of this rank's rows
        # every rank trains the same head on the whole step batch: gather h, correctness and groups from all ranks
        device = hidden.device
        hidden, offset = context.collective.gather(hidden)
        correct, _ = context.collective.gather(batch.correct.to(device, torch.float32))
        group_ids, _ = context.collective.gather(batch.group_ids.to(device))
        correct = correct.bool()
        groups = group_structure(correct, group_ids)
        usable = (groups.n_pos >= 2) & (groups.n_neg >= 1)
        rows = torch.nonzero(usable[groups.index]).flatten()
        shaping = context.step >= self.head_warmup_steps
        self.prepare_metrics = {"clipo/usable_groups": float(usable.float().mean()), "clipo/shaping": float(shaping)}
        if len(rows) == 0:
            return batch
        if self.head is None:
            self._build_head(hidden.shape[-1], device)
        positives = sample_positives(correct[rows].cpu(), group_ids[rows].cpu(), self.generator).to(device)

        anchors = correct[rows]
        with torch.enable_grad():  # the head trains even if the trainer calls prepare under no_grad
            embeddings = nn.functional.normalize(self.head(hidden[rows]), dim=-1)  # z_i
            losses = infonce_losses(embeddings, positives, group_ids[rows], self.temperature)  # L_i
            head_loss = losses[anchors].mean()
            self.head_optimizer.zero_grad(set_to_none=True)
            head_loss.backward()
        self.head_optimizer.step()

        penalty = torch.zeros(len(correct), device=device)  # lambda L_i on the anchors, capped; 0 elsewhere
        penalty[rows[anchors]] = torch.clamp(self.reward_lambda * losses.detach()[anchors], max=self.max_penalty)
        self.prepare_metrics.update({"clipo/head_loss": float(head_loss.detach()),
                                     "clipo/penalty_mean": float(penalty[rows[anchors]].mean())})
        if not shaping:
            return batch
        local = penalty[offset: offset + len(batch)].to(batch.rewards.device)
        return batch.with_rewards(batch.rewards - local)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The head's weights, its optimizer state and the sampler's RNG state (the trainer saves it with each
        checkpoint); before the first batch only the RNG state exists."""
        state = {"generator": self.generator.get_state(), "base": self.base.state_dict()}
        if self.head is not None:
            state["head"] = self.head.state_dict()
            state["optimizer"] = self.head_optimizer.state_dict()
        elif self.restored_head is not None:
            state.update(self.restored_head)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.base.load_state_dict(state["base"])
        if "head" not in state:
            return
        self.restored_head = {"head": state["head"], "optimizer": state["optimizer"]}
        if self.head is not None:
            self._build_head(self.head.in_features, self.head.weight.device)
