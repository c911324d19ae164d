"""ConSPO: contrastive sequence-score policy optimisation (paper Sec. 4.2-4.3, Eqs. 10-16), with its Table 6
ablations as config switches and the GRPO discriminative form of Eq. 8.

Per group q with positives P (verified correct) and negatives N:

    s_i   = (1/|o_i|) sum_t log pi_theta(o_{i,t})                                         (likelihood score)
    J(q)  = (1/N+) sum_{i in P} tau log[ e^{(s_i - m_t)/tau} / (e^{(s_i - m_t)/tau} + sum_{j in N} e^{s_j/tau}) ]  (15)
    m_t   = (M/2) (1 - cos(pi min(lambda_t / alpha, 1)))                                  (16)
    loss  = - mean over the groups of the step batch of J(q)      (degenerate groups contribute 0)

Ablations (Table 6):  contrastive=False -> Eq. 8 with likelihood scores ("w/o contrastive objective");
score="clipped_ratio" -> s+ for positives, s- for negatives (Eq. 7, "w/o log-likelihood scores");
margin_max=0 ("w/o scheduled margin");  margin_schedule="fixed" (m_t = M, "w/ fixed margin").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import RolloutBatch, SequenceInfo
from .losses import (
    clipped_ratio_scores,
    conspo_group_objective,
    contrastive_probabilities,
    discriminative_group_objective,
    group_structure,
    margin_at,
    sequence_scores,
)
from .objective import Objective, check_parameter, register_objective

SCORES = ("likelihood", "clipped_ratio")
SCHEDULES = ("cosine", "fixed")


@register_objective("conspo")
@dataclass
class ConSPO(Objective):
    tau: float = 10.0  # temperature (Table 7)
    margin_max: float = 0.01  # M
    margin_warmup: float = 0.3  # alpha: fraction of training over which the margin ramps up
    margin_schedule: str = "cosine"  # "cosine" (Eq. 16) or "fixed" (m_t = M)
    score: str = "likelihood"  # "likelihood" (Sec. 4.2) or "clipped_ratio" (Eq. 7)
    contrastive: bool = True  # False: the linear score difference of Eq. 8
    clip_eps: float = 0.2  # epsilon of the clipped-ratio scores

    n_terms = 2  # (score used for positives, score used for negatives); equal for the likelihood score

    def __post_init__(self):
        check_parameter("tau", self.tau, self.tau > 0, "> 0")
        check_parameter("margin_max", self.margin_max, self.margin_max >= 0, ">= 0")
        check_parameter("margin_warmup", self.margin_warmup, self.margin_warmup > 0,
                        "> 0 (the fraction of training over which the margin ramps up)")
        check_parameter("margin_schedule", self.margin_schedule, self.margin_schedule in SCHEDULES,
                        f"one of {', '.join(SCHEDULES)}")
        check_parameter("score", self.score, self.score in SCORES, f"one of {', '.join(SCORES)}")
        check_parameter("clip_eps", self.clip_eps, 0 <= self.clip_eps <= 1, "in [0, 1]")

    def margin(self, progress: float) -> float:
        if self.margin_schedule == "fixed":
            return self.margin_max
        return margin_at(progress, self.margin_max, self.margin_warmup)  # Eq. 16

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        mask = batch.response_mask
        if self.score == "likelihood":
            s = sequence_scores(logprobs, mask)
            return torch.stack([s, s], dim=-1)
        s_pos, s_neg = clipped_ratio_scores(logprobs, batch.old_logprobs, mask, self.clip_eps)  # Eq. 7
        return torch.stack([s_pos, s_neg], dim=-1)

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        correct, groups = info.correct, info.group_ids
        if self.contrastive:
            # each row's score: s+ (column 0) if it is a positive, s- (column 1) if a negative
            scores = torch.where(correct, terms[:, 0], terms[:, 1])
            m_t = self.margin(progress)
            per_group = conspo_group_objective(scores, correct, groups, self.tau, m_t)  # Eq. 15
            with torch.no_grad():
                p_pos = contrastive_probabilities(scores, correct, groups, self.tau, m_t)  # Eq. 11
            metrics = {"margin": m_t, "p_pos_mean": float(torch.nanmean(p_pos)) if bool((~p_pos.isnan()).any()) else float("nan")}
        else:
            per_group = discriminative_group_objective(terms[:, 0], terms[:, 1], correct, groups)  # Eq. 8
            metrics = {}
        structure = group_structure(correct, groups)
        metrics["degenerate_groups"] = float((~structure.contrastive).float().mean())
        metrics["objective"] = float(per_group.detach().mean())
        return -per_group.mean(), metrics


# Table 6 ablations and the discriminative reading of GRPO (Proposition 1), as named presets of the same objective.
register_objective("conspo_no_contrastive", contrastive=False)(ConSPO)
register_objective("conspo_ratio_scores", score="clipped_ratio")(ConSPO)
register_objective("conspo_no_margin", margin_max=0.0)(ConSPO)
register_objective("conspo_fixed_margin", margin_schedule="fixed")(ConSPO)
register_objective("grpo_discriminative", contrastive=False, score="clipped_ratio", margin_max=0.0)(ConSPO)
