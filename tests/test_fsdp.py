"""FSDP2 on CPU: two gloo processes shard the policy with accelerate's own FSDP2 preparation (activation
checkpointing of the decoder layers, then fully_shard on each decoder layer, the embedding, [final norm, head] and
the root), as config/accelerate/fsdp_*.yaml ask for on GPUs. The swapped output head runs inside the sharded
model's forward: its log-probs and one AdamW update (ConSPO's exact group gradients over token-budget micro-batches,
the ranks holding different numbers of rows) equal the unsharded run's."""

from __future__ import annotations

import dataclasses
import os
import types

import torch
import torch.multiprocessing as mp

from conspo.forward import PolicyForward, output_head
from conspo.objective import TorchDistributed, accumulate_gradients, build_objective
from test_exact_gradients import _agree, _free_port
from test_forward import rollout_rows, tiny_qwen

ROWS = {0: list(range(9)), 1: [9, 10, 11]}  # whole groups of 3 per rank; rank 1 runs empty micro-batches
BUDGET, TEMPERATURE, LR = 20, 0.7, 1e-2


def shared_batch():
    rewards = torch.tensor([1., 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0])  # every group of 3 mixed
    batch = dataclasses.replace(rollout_rows(seed=3, rows=12), rewards=rewards, correct=rewards.bool())
    objective = build_objective("conspo")
    return objective, batch.with_advantages(objective.advantages(batch.rewards, batch.group_ids))


def update(optimizer, forward, objective, batch, collective=None):
    accumulate_gradients(objective, batch, forward.gradient_passes(), progress=0.5, collective=collective)
    optimizer.step()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                reshard_after_forward=True, cpu_ram_efficient_loading=False,
                                                activation_checkpointing=True)
        accelerator = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no",
                                            is_main_process=rank == 0, device=torch.device("cpu"))
        model = fsdp2_prepare_model(accelerator, fsdp2_apply_ac(accelerator, tiny_qwen(torch.float32)))
        assert type(model).__name__.startswith("FSDP") and type(model.lm_head).__name__.startswith("FSDP")
        # before any forward, as the trainer's (accelerate's prepare): a no-grad forward leaves the [norm, head]
        # unit unsharded until the next backward, and model.parameters() would then give the unsharded tensors
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        objective, batch = shared_batch()
        local = batch.select(torch.tensor(ROWS[rank]))
        forward = PolicyForward(model, output_head(model), temperature=TEMPERATURE, max_tokens=BUDGET, agree=_agree)
        counts = [None] * world
        torch.distributed.all_gather_object(counts, [len(mb) for _, mb in forward.split(local)])
        logprobs, _ = forward.token_logprobs(local)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, logprobs)
        update(optimizer, forward, objective, local, TorchDistributed())
        weights = {name: value.full_tensor() for name, value in model.state_dict().items()}
        if rank == 0:
            torch.save({"counts": counts, "logprobs": gathered, "weights": weights}, out)
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp2_sharded_policy_gives_the_unsharded_logprobs_and_update(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "fsdp.pt")), nprocs=2, join=True)
    result = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    micro_batches = result["counts"]
    assert len(micro_batches[0]) == len(micro_batches[1]) and 0 in micro_batches[1]  # rank 1 ran empty ones
    model = tiny_qwen(torch.float32)
    objective, batch = shared_batch()
    forward = PolicyForward(model, output_head(model), temperature=TEMPERATURE, max_tokens=BUDGET)
    reference, _ = forward.token_logprobs(batch)
    for rank, logprobs in enumerate(result["logprobs"]):
        rows = reference[ROWS[rank]]
        torch.testing.assert_close(logprobs, rows[:, :logprobs.shape[1]], atol=1e-5, rtol=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    update(torch.optim.AdamW(model.parameters(), lr=LR), forward, objective, batch)
    moved = max(float((model.state_dict()[k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-3
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result["weights"][name], value, atol=1e-5, rtol=0, msg=name)
