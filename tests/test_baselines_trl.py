"""Cross-checks of the baselines against TRL 1.16's own loss code (an implementation we did not write).

TRL computes its losses inside `GRPOTrainer._compute_loss` (and `GMPOTrainer._compute_loss` for the experimental
GMPO). We call that method unchanged on a stand-in trainer object that carries only the attributes it reads and whose
`_get_per_token_logps_and_entropies` returns the per-token log-probs under test, so the loss maths, masking and
normalisation are TRL's. Inputs: identical per-token log-probs (a leaf), old log-probs, advantages, masks.

Normalisation notes (documented in docs/baselines.md): TRL divides every loss by the gradient-accumulation steps and,
for "dapo"/"cispo", by the token count of the whole generation batch; with one accumulation step and one micro-batch
(set here) both reduce to our whole-batch normalisers, which `accumulate_gradients` keeps under micro-batching.
"""

import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trl import import_utils as trl_import_utils
from conspo import RolloutBatch, build_objective
from conspo.losses import group_advantages

_vllm_check = trl_import_utils.is_vllm_available
trl_import_utils.is_vllm_available = lambda *args, **kwargs: False  # the loss code never uses vLLM; skip importing it
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's "experimental API" notice for GMPO
        from trl.experimental.gmpo.gmpo_trainer import GMPOTrainer
        from trl.trainer.grpo_trainer import GRPOTrainer
        from trl.trainer.utils import nanstd
finally:
    trl_import_utils.is_vllm_available = _vllm_check

N, T, MAX_COMPLETION = 7, 6, 9


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 1, 4, 6, 3, 5, 2])
    mask = torch.arange(T)[None] < lengths[:, None]
    old = -torch.rand(N, T, generator=gen) * 3
    logprobs = old + 0.5 * torch.randn(N, T, generator=gen)  # ratios well outside every clip range
    ref = old + 0.3 * torch.randn(N, T, generator=gen)
    advantages = torch.tensor([1.3, -0.7, 0.4, -1.1, 0.0, 0.9, -0.2])
    return logprobs.double(), old.double(), ref.double(), advantages.double(), mask


def trl_loss(trainer_class, loss_type, logprobs, old, ref, advantages, mask, *, beta=0.0, eps=0.2, eps_high=None,
             sapo_pos=1.0, sapo_neg=1.05):
    leaf = logprobs.clone().requires_grad_(True)
    stand_in = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (leaf, torch.zeros_like(leaf), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps if eps_high is None else eps_high,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1,
                             sapo_temperature_pos=sapo_pos, sapo_temperature_neg=sapo_neg),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION,
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x,
                                    sync_gradients=True),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    batch = {
        "prompt_ids": torch.zeros(N, 1, dtype=torch.long),
        "prompt_mask": torch.ones(N, 1, dtype=torch.long),
        "completion_ids": torch.zeros(N, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    loss = trainer_class._compute_loss(stand_in, None, batch)
    (grad,) = torch.autograd.grad(loss, leaf)
    return float(loss.detach()), grad


def our_loss(name, params, logprobs, old, ref, advantages, mask):
    objective = build_objective(name, params)
    batch = RolloutBatch.create(
        response_ids=torch.zeros(N, T, dtype=torch.long),
        response_mask=mask,
        old_logprobs=old,
        ref_logprobs=ref,
        rewards=torch.zeros(N),
        group_ids=torch.zeros(N, dtype=torch.long),
        advantages=advantages,
    )
    leaf = logprobs.clone().requires_grad_(True)
    loss, _ = objective.loss(objective.sequence_terms(batch, leaf), batch.info, 0.5)
    (grad,) = torch.autograd.grad(loss, leaf)
    return float(loss.detach()), grad


CASES = [
    # (TRL loss_type, TRL settings, our method, our params)
    ("grpo", {}, "grpo", {}),
    ("grpo", {"beta": 0.04}, "grpo", {"kl_coef": 0.04}),
    ("bnpo", {}, "grpo", {"aggregation": "token-mean"}),
    ("dapo", {"eps_high": 0.28}, "dapo", {}),
    ("dr_grpo", {}, "dr_grpo", {"aggregation_constant": float(MAX_COMPLETION)}),
    ("cispo", {"eps_high": 5.0}, "cispo", {}),  # our default: relative bound 1 + 4.0 == TRL's absolute 5.0
    ("cispo", {"eps_high": 5.0}, "cispo", {"ratio_bound": "absolute", "clip_eps_high": 5.0}),
    ("cispo", {"eps_high": 1.1}, "cispo", {"ratio_bound": "absolute", "clip_eps_high": 1.1}),  # cap active
    ("cispo", {"eps_high": 1.1}, "cispo", {"clip_eps_high": 0.1}),
    # TRL builds SAPO's temperatures with torch.where on Python floats, i.e. in float32 (what
    # tests/test_float64_fidelity.py catches in ours): the cross-check uses temperatures float32 holds exactly
    ("sapo", {"sapo_neg": 1.0625}, "sapo", {"tau_neg": 1.0625}),
    ("sapo", {"sapo_pos": 0.5, "sapo_neg": 2.0}, "sapo", {"tau_pos": 0.5, "tau_neg": 2.0}),
]


@pytest.mark.parametrize("loss_type,trl_settings,name,params", CASES)
def test_token_losses_match_trl(loss_type, trl_settings, name, params):
    data = inputs()
    trl_value, trl_grad = trl_loss(GRPOTrainer, loss_type, *data, **trl_settings)
    value, grad = our_loss(name, params, *data)
    assert value == pytest.approx(trl_value, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("eps", [0.4, 0.1])
def test_gmpo_matches_trl_experimental_gmpo(eps):
    data = inputs(seed=1)
    trl_value, trl_grad = trl_loss(GMPOTrainer, "gmpo", *data, eps=eps)
    value, grad = our_loss("gmpo", {"clip_eps_low": eps, "clip_eps_high": eps}, *data)
    assert value == pytest.approx(trl_value, rel=1e-9)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-9, atol=1e-12)


def test_clipping_is_active_in_the_cross_check_inputs():
    """The inputs exercise both clipped and unclipped tokens, so agreement is not agreement on the easy branch."""
    logprobs, old, _, _, mask = inputs()
    ratio = torch.exp(logprobs - old)[mask]
    assert bool((ratio > 1.28).any()) and bool((ratio < 0.8).any()) and bool(((ratio > 0.8) & (ratio < 1.2)).any())


def test_unbiased_advantage_matches_trl_group_scaling():
    """advantage_std="unbiased", eps 1e-4 is TRL's scale_rewards="group": (r - mean_g) / (nanstd_g + 1e-4)."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    grouped = rewards.view(2, 4)
    trl_advantages = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1)[:, None] + 1e-4)
    ours = group_advantages(rewards, torch.tensor([0] * 4 + [1] * 4), "unbiased", eps=1e-4)
    torch.testing.assert_close(ours, trl_advantages.flatten())
