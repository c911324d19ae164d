"""Distribution on `accelerate`: the Collective that exact group gradients all-gather through, and the command
lines that start a training run on one node or several (SLURM `srun` + `accelerate launch`).

    python -m conspo.distributed --nodes 4 --gpus-per-node 8 --config run.yaml --out DIR   # prints the command

Accelerate config files for the paper's settings live in config/accelerate/ (docs/training.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .objective import Collective, SingleProcess, TorchDistributed
from .runconfig import ConfigError, RunConfig

ACCELERATE_CONFIGS = "config/accelerate"  # relative to the repository root, where the workflow runs


def collective_for(accelerator) -> Collective:
    """All-gather over the process group accelerate initialised (identity on one process)."""
    return TorchDistributed() if accelerator.num_processes > 1 else SingleProcess()


def configure_deepspeed(plugin, cfg: RunConfig, world: int) -> None:
    """Fill the DeepSpeed config of an accelerate DeepSpeed plugin from the run config, before `prepare`: one engine
    step per optimizer step (the trainer marks the last micro-batch as the accumulation boundary, so DeepSpeed's
    own accumulation count stays 1 and its loss scaling a no-op), the batch size, and clipping at
    `train.max_grad_norm` (the engine clips; accelerate's "auto" would be 1.0). Refuses what ZeRO cannot run here."""
    ds = plugin.deepspeed_config
    if cfg.dynamic_sampling.enabled:
        raise ConfigError("dynamic_sampling.enabled: not supported under DeepSpeed: ranks would keep different numbers "
                          "of rollouts, hence run different numbers of backward passes, and ZeRO communicates in each")
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage == 3 and cfg.rollout.engine == "transformers":
        raise ConfigError("rollout.engine: transformers generates with the full parameters, which ZeRO-3 partitions; "
                          "use rollout.engine: vllm or ZeRO stage 2")
    # one engine step per optimizer step: its "micro-batch" is a rank's rollouts of one mini-batch
    rows = cfg.train.prompts_per_step // (world * cfg.train.mini_batches_per_step) * cfg.rollout.group_size
    ds["train_micro_batch_size_per_gpu"] = rows
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = rows * world
    ds["gradient_clipping"] = cfg.train.max_grad_norm or 0.0


def default_accelerate_config(nodes: int, gpus_per_node: int) -> str:
    """The repo's accelerate config for a layout: FSDP on GPUs (one node of 8 or four nodes of 8 in the paper);
    two gloo processes on CPU (gpus_per_node=0)."""
    if gpus_per_node == 0:
        return f"{ACCELERATE_CONFIGS}/cpu_2proc.yaml"
    return f"{ACCELERATE_CONFIGS}/{'fsdp_8gpu.yaml' if nodes == 1 else 'fsdp_4x8gpu.yaml'}"


def launch_command(*, config: str, out: str, nodes: int = 1, gpus_per_node: int = 8,
                   accelerate_config: str | None = None, main_port: int = 29500, max_steps: int | None = None,
                   use_srun: bool = True) -> str:
    """The shell command that runs `conspo train` on `nodes` x `gpus_per_node` processes.

    One node: `accelerate launch` starts the local processes (prefixed with `srun` inside a SLURM allocation).
    Several nodes: `srun` starts one launcher per node; each reads its machine rank from SLURM_NODEID and meets the
    others at the allocation's first host, so the inner command is quoted for the shell on every node.
    `gpus_per_node=0` means two CPU processes (gloo, config/accelerate/cpu_2proc.yaml); `nodes` must then be 1.
    """
    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"need nodes >= 1 and gpus_per_node >= 0, got {nodes}, {gpus_per_node}")
    if gpus_per_node == 0 and nodes != 1:
        raise ValueError("CPU (gloo) runs are single-node here: nodes must be 1 when gpus_per_node=0")
    acc = accelerate_config or default_accelerate_config(nodes, gpus_per_node)
    processes = max(gpus_per_node, 1) * nodes if gpus_per_node else 2
    train = ["-m", "conspo.cli", "train", "--config", config, "--out", out]
    if max_steps is not None:
        train += ["--max-steps", str(max_steps)]
    launcher = ["accelerate", "launch", "--config_file", acc, "--num_processes", str(processes)]
    if nodes == 1:
        command = shlex.join(launcher + train)
        return f"srun --nodes 1 --ntasks 1 {command}" if use_srun else command
    launcher += ["--num_machines", str(nodes), "--machine_rank", "$SLURM_NODEID",
                 "--main_process_ip", "$MAIN_HOST", "--main_process_port", str(main_port),
                 "--rdzv_backend", "static", "--same_network"]
    inner = " ".join(part if part.startswith("$") else shlex.quote(part) for part in launcher + train)
    return (f"MAIN_HOST=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) "
            f"srun --nodes {nodes} --ntasks-per-node 1 --export=ALL,MAIN_HOST bash -c {shlex.quote(inner)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conspo.distributed", description=launch_command.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--accelerate-config", default=None)
    parser.add_argument("--main-port", type=int, default=29500)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--no-srun", action="store_true", help="single node: print the bare accelerate command")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(launch_command(config=args.config, out=args.out, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         accelerate_config=args.accelerate_config, main_port=args.main_port,
                         max_steps=args.max_steps, use_srun=not args.no_srun))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
