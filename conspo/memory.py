"""The memory planner: each training run's per-GPU peak, estimated from the model's shape, the sharding, the token
budget, activation checkpointing, the output-head chunk and the vLLM reservation, checked against the GPU memory its
resources name (docs/training.md, "Memory").

    conspo memory --config config/paper.yaml        # the table, one line per training run; exit 1 if one cannot fit
    check_plan_memory(plan)                         # the same check when the workflow parses its config

A run's peak is the larger of two phases:
- generation: the trainer's resident state (sharded parameters, gradients, AdamW moments) + vLLM's reservation
  (`rollout.vllm.gpu_memory_utilization` of the GPU, colocated) + the runtime's own (CUDA context, NCCL, cuBLAS);
- update: the resident state + the working set of one micro-batch (`stage_peak`: activations saved for backward,
  the output head's chunk and weight gradient, the gradients being formed) + the runtime + what vLLM keeps while the
  policy trains (with sleep mode its weights and KV cache are released; without it the whole reservation stays).
Activations follow conspo.forward's passes: rows packed without a padding mask (no [s, s] term; SDPA saves q, k, v,
its output and log-sum-exp), bf16 (or the model's dtype) activations, float32 RMSNorm internals. The per-token
terms are validated against peaks measured on CPU at scaled shapes with the real vocabulary
(`python -m benchmarks memory`, within 15%); the runtime and vLLM-asleep terms are stated assumptions until
benchmarks/gpu_step.py has run on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .forward import VOCAB_BLOCK
from .objective import build_objective

GIB = 2**30
USABLE = 0.85  # the share of a GPU's memory a run may plan to use (the rest: fragmentation, spikes)
RUNTIME_GIB = 2.0  # CUDA context, NCCL and cuBLAS workspaces per process (assumed, not measured here)
VLLM_ASLEEP_GIB = 1.0  # what a sleeping colocated vLLM keeps (CUDA graphs' pools; assumed, not measured here)
SHAPES = "config/model_shapes.yaml"  # relative to the repository root, where the workflow runs
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers config (Qwen2, Qwen3, Llama and alike)."""
        heads = config.num_attention_heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, tied=bool(config.tie_word_embeddings),
                   qkv_bias=bool(getattr(config, "attention_bias", config.model_type == "qwen2")),
                   qk_norm=config.model_type == "qwen3")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h = self.hidden
        attention = 2 * h * self.q_dim + 2 * h * self.kv_dim
        attention += (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + 2 * self.head_dim * self.qk_norm
        return attention + 3 * h * self.intermediate + 2 * h

    @property
    def params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden


def shape_of(source: str | Path) -> ModelShape:
    """A local model folder's shape (its config.json)."""
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(source))


def hub_shape(model_id: str, shapes: str | Path = SHAPES) -> ModelShape | None:
    """A Hub model's shape from the repository's data (config/model_shapes.yaml); None if it is not there."""
    from transformers import AutoConfig

    entry = yaml.safe_load(Path(shapes).read_text()).get(model_id)
    if entry is None:
        return None
    entry = dict(entry)
    return ModelShape.from_config(AutoConfig.for_model(entry.pop("model_type"), **entry))


# --------------------------------------------------------------------------------------------- per token


def norm_bytes(width: int, act: int) -> int:
    """An RMSNorm in the model's dtype: its float32 input copy, the normalised input and its output (saved by the
    projection that follows)."""
    return 4 * width + 2 * act * width


def layer_bytes(shape: ModelShape, act: int) -> int:
    """Bytes per token one decoder layer saves for backward (no checkpointing): two RMSNorms; SDPA's q, k, v (after
    RoPE; k and v at the key-value width, GQA without a repeat since no mask is passed), output and float32
    log-sum-exp per head, o_proj's contiguous input; SwiGLU's gate, SiLU(gate), up and their product."""
    attention = act * (3 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.heads
    qk_norm = (4 + act) * (shape.q_dim + shape.kv_dim) if shape.qk_norm else 0
    return 2 * norm_bytes(shape.hidden, act) + attention + qk_norm + 4 * act * shape.intermediate


def layer_backward_bytes(shape: ModelShape, act: int) -> int:
    """Bytes per token of the gradients alive at once inside one layer's backward (the MLP's two widest, the
    layer's input and output gradients)."""
    return 2 * act * shape.intermediate + 2 * act * shape.hidden


def final_bytes(shape: ModelShape, act: int) -> int:
    """Bytes per token after the last layer: the final RMSNorm, the head's gathered input, its float32 log-sum-exp
    and the token index (counted for every position, an upper bound for the response tokens)."""
    return norm_bytes(shape.hidden, act) + act * shape.hidden + 4 + 16


def saved_bytes(shape: ModelShape, act: int, checkpointing: bool) -> int:
    """Bytes per token saved for backward by the whole forward: every layer's activations, or with activation
    checkpointing every layer's input only."""
    per_layer = act * shape.hidden if checkpointing else layer_bytes(shape, act)
    return shape.layers * per_layer + final_bytes(shape, act)


# --------------------------------------------------------------------------------------------- head


def head_forward_bytes(shape: ModelShape, chunk: int, param: int) -> int:
    """conspo.forward's head in forward: one chunk's logits in the head's dtype and float32, and its exponentials."""
    return chunk * shape.vocab * max(param + 4, 8)


def head_backward_bytes(shape: ModelShape, chunk: int, param: int) -> int:
    """The head in backward: a recomputed chunk in float32 and, for a narrower head, its cast to the head's dtype;
    the weight gradient's float32 sum over chunks and, for a narrower head, one vocabulary block's product (in the
    head's dtype and float32)."""
    if param >= 4:
        return (chunk + shape.hidden) * shape.vocab * 4
    return chunk * shape.vocab * (4 + param) + 4 * shape.vocab * shape.hidden + (param + 4) * VOCAB_BLOCK * shape.hidden


# --------------------------------------------------------------------------------------------- one micro-batch


@dataclass(frozen=True)
class Stage:
    """What one micro-batch's forward and backward hold besides the resident state."""

    tokens: int  # positions of the micro-batch (the token budget)
    checkpointing: bool
    chunk: int  # response tokens per chunk through the head
    act: int  # bytes of an activation (the compute dtype)
    param: int  # bytes of a parameter as the forward uses it

    def moments(self, shape: ModelShape, grads: int, last_grads: int) -> dict[str, int]:
        """Bytes alive at the stage's candidate peaks. `grads`: parameter gradients alive while the decoder layers
        back-propagate (on one process: all but the embedding's; FSDP reduce-scatters them unit by unit);
        `last_grads`: those alive when the embedding's is formed, at the end."""
        chunk = min(self.chunk, self.tokens)
        saved = self.tokens * saved_bytes(shape, self.act, self.checkpointing)
        layers = self.tokens * shape.layers * (self.act * shape.hidden if self.checkpointing
                                               else layer_bytes(shape, self.act))
        recomputed = self.tokens * layer_bytes(shape, self.act) if self.checkpointing else 0
        return {
            "head forward": saved + head_forward_bytes(shape, chunk, self.param),
            "head backward": saved + head_backward_bytes(shape, chunk, self.param),
            "layer backward": layers + recomputed + self.tokens * layer_backward_bytes(shape, self.act) + grads,
            "end of backward": last_grads + self.tokens * self.act * shape.hidden,
        }

    def peak(self, shape: ModelShape, grads: int, last_grads: int) -> int:
        return max(self.moments(shape, grads, last_grads).values())


# --------------------------------------------------------------------------------------------- one GPU


@dataclass(frozen=True)
class Layout:
    """How one training process holds the model: `world` data-parallel processes, FSDP2 full sharding (with bf16
    mixed precision: float32 master weights), DeepSpeed ZeRO-`zero` or plain DDP; `dtype`: the loaded weights'."""

    world: int
    backend: str  # fsdp | deepspeed | ddp
    mixed_precision: bool
    dtype: str
    zero: int = 0

    def state_bytes(self, shape: ModelShape) -> int:
        """Parameters, gradients and AdamW's two moments resident between steps."""
        n, w = shape.params, self.world
        if self.backend == "fsdp":
            master = 4 if self.mixed_precision else DTYPE_BYTES[self.dtype]
            return 4 * master * n // w  # parameter, gradient, two moments, sharded
        if self.backend == "deepspeed":
            compute = 2 if self.mixed_precision else DTYPE_BYTES[self.dtype]
            sharded = 12 * n // w if self.mixed_precision else 2 * compute * n // w  # fp32 master + moments
            grads = compute * n // (w if self.zero >= 2 else 1)
            params = compute * n // (w if self.zero >= 3 else 1)
            return params + grads + sharded
        p = DTYPE_BYTES[self.dtype]
        return 4 * p * n  # DDP: everything on every process

    def reference_bytes(self, shape: ModelShape) -> int:
        """A frozen reference policy (objectives with a KL term), prepared like the policy for evaluation only:
        its parameters, and under FSDP its [norm, head] unit, which no-grad forwards leave unsharded."""
        n, compute = shape.params, self.compute_bytes()
        if self.backend == "fsdp":
            master = 4 if self.mixed_precision else DTYPE_BYTES[self.dtype]
            return master * n // self.world + compute * shape.vocab * shape.hidden
        return compute * n // (self.world if self.backend == "deepspeed" and self.zero >= 3 else 1)

    def working_bytes(self, shape: ModelShape) -> tuple[int, int, int]:
        """(unsharded parameters while a micro-batch runs, the gradients alive while its decoder layers
        back-propagate, those alive when the embedding's gradient is formed), beyond `state_bytes`."""
        compute = self.compute_bytes()
        head, layers = shape.vocab * shape.hidden, 2 * shape.layer_params
        if self.backend == "fsdp":
            # accelerate's FSDP2 units: the embedding, [final norm, head] (kept through the step), each decoder
            # layer (one in use, one prefetched); a unit's gradients exist unsharded until reduce-scattered
            return compute * (head * (1 if shape.tied else 2) + layers), compute * (head + layers), compute * head
        if self.backend == "deepspeed" and self.zero >= 3:
            return compute * (head * (1 if shape.tied else 2) + layers), 0, 0
        return 0, 0, 0  # the parameters and their gradients are resident: state_bytes

    def compute_bytes(self) -> int:
        return 2 if self.mixed_precision else DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Estimate:
    run: str
    model: str
    gpus: int
    gpu_gib: float
    tokens: int
    checkpointing: bool
    state: int
    working: int
    stage: int
    vllm_generation: int
    vllm_update: int

    @property
    def generation(self) -> int:
        return self.state + RUNTIME_GIB * GIB + self.vllm_generation

    @property
    def update(self) -> int:
        return self.state + self.working + self.stage + RUNTIME_GIB * GIB + self.vllm_update

    @property
    def peak(self) -> int:
        return int(max(self.generation, self.update))

    @property
    def share(self) -> float:
        return self.peak / (self.gpu_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.share <= USABLE


def layout_of(accelerate_config: str | None, world: int, dtype: str) -> tuple[Layout, bool]:
    """The Layout an accelerate config file gives `world` processes, and whether it checkpoints activations."""
    spec = yaml.safe_load(Path(accelerate_config).read_text()) if accelerate_config else {}
    kind = spec.get("distributed_type", "MULTI_GPU")
    mixed = spec.get("mixed_precision", "no") in ("bf16", "fp16")
    if kind == "FSDP":
        fsdp = spec.get("fsdp_config", {})
        return Layout(world, "fsdp", mixed, dtype), bool(fsdp.get("fsdp_activation_checkpointing", False))
    if kind == "DEEPSPEED":
        zero = int(spec.get("deepspeed_config", {}).get("zero_stage", 0))
        return Layout(world, "deepspeed", mixed, dtype, zero), False
    return Layout(world, "ddp", mixed, dtype), False


def estimate(run: str, model: str, cfg, shape: ModelShape, resources: dict) -> Estimate:
    """The per-GPU estimate of one training run (`cfg`: its parsed RunConfig; `resources`: models.<m>.resources.train
    of the workflow config)."""
    world = resources.get("nodes", 1) * resources.get("gpus_per_node", 0)
    layout, fsdp_checkpointing = layout_of(resources.get("accelerate_config"), max(world, 1), cfg.model.dtype)
    t = cfg.train
    stage = Stage(tokens=t.max_tokens_per_micro_batch, checkpointing=t.gradient_checkpointing or fsdp_checkpointing,
                  chunk=t.logit_chunk_tokens, act=layout.compute_bytes(), param=layout.compute_bytes())
    working, grads, last_grads = layout.working_bytes(shape)
    gpu = float(resources["gpu_memory_gib"])
    vllm = cfg.rollout.engine == "vllm" and cfg.rollout.vllm.mode == "colocate"
    reserved = int(cfg.rollout.vllm.gpu_memory_utilization * gpu * GIB) if vllm else 0
    asleep = int(VLLM_ASLEEP_GIB * GIB) if cfg.rollout.vllm.enable_sleep_mode else reserved
    state = layout.state_bytes(shape)
    if build_objective(cfg.method.name, cfg.method.params).needs_reference:
        state += layout.reference_bytes(shape)
    return Estimate(run=run, model=model, gpus=world, gpu_gib=gpu, tokens=stage.tokens,
                    checkpointing=stage.checkpointing, state=state, working=working,
                    stage=stage.peak(shape, grads, last_grads), vllm_generation=reserved,
                    vllm_update=asleep if vllm else 0)


# --------------------------------------------------------------------------------------------- the plan


def plan_estimates(plan) -> list[Estimate]:
    """One estimate per training run of a conspo.plan.Plan whose model trains on GPUs; PlanError (naming the key)
    when a GPU run lacks its GPU memory or its model's shape is unknown."""
    from .plan import PlanError
    from .runconfig import parse_config

    out = []
    for name, run in plan.runs.items():
        spec = plan.models[run.model]
        resources = spec["resources"]["train"]
        if not resources.get("gpus_per_node", 0):
            continue  # CPU runs: nothing to plan here
        key = f"models.{run.model}.resources.train.gpu_memory_gib"
        if "gpu_memory_gib" not in resources:
            raise PlanError(f"{key}: required for a model that trains on GPUs (the memory planner checks that each "
                            "run fits)")
        local = Path(plan.model_dir(run.model)) / "config.json"
        shape = shape_of(local.parent) if local.is_file() else \
            hub_shape(spec["id"]) if spec.get("source") == "hub" else None
        if shape is None:
            raise PlanError(f"models.{run.model}.id: no shape known for the memory planner: add the model's "
                            f"config.json values to {SHAPES}, or build the model folder first")
        out.append(estimate(name, run.model, parse_config(plan.run_config(name), check_paths=False), shape,
                            resources))
    return out


def refusal(e: Estimate) -> str:
    """Why a run does not fit, naming the GPU memory key first and the settings that set the largest terms."""
    terms = {"model state (sharded parameters, gradients, AdamW)": e.state,
             "unsharded parameters and gradients": e.working,
             "one micro-batch (train.max_tokens_per_micro_batch, train.gradient_checkpointing or "
             "fsdp_activation_checkpointing, train.logit_chunk_tokens)": e.stage,
             "vLLM during the update (rollout.vllm.enable_sleep_mode)": e.vllm_update,
             "vLLM during generation (rollout.vllm.gpu_memory_utilization)": e.vllm_generation}
    largest = ", ".join(f"{name} {value / GIB:.1f} GiB" for name, value in
                        sorted(terms.items(), key=lambda item: -item[1]) if value)
    return (f"models.{e.model}.resources.train.gpu_memory_gib: run {e.run} needs an estimated {e.peak / GIB:.1f} GiB "
            f"per GPU, more than {USABLE:.0%} of {e.gpu_gib:g} GiB; its terms: {largest}")


def check_plan_memory(plan) -> None:
    """Refuse (PlanError, naming the key) a plan with a training run that cannot fit its GPUs."""
    from .plan import PlanError

    for e in plan_estimates(plan):
        if not e.fits:
            raise PlanError(refusal(e))


def table(estimates: list[Estimate]) -> str:
    """The planner's table (Markdown): one line per run."""
    head = ("| run | GPUs | tokens / micro-batch | checkpointing | state GiB | unsharded GiB | micro-batch GiB | "
            "generation GiB | update GiB | peak GiB | of GPU |")
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in estimates:
        lines.append(f"| {e.run} | {e.gpus} x {e.gpu_gib:g} GiB | {e.tokens:,} | {'on' if e.checkpointing else 'off'} "
                     f"| {e.state / GIB:.1f} | {e.working / GIB:.1f} | {e.stage / GIB:.1f} | {e.generation / GIB:.1f} "
                     f"| {e.update / GIB:.1f} | {e.peak / GIB:.1f} | {e.share:.0%} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="conspo memory", description="per-GPU memory of every training run")
    parser.add_argument("--config", required=True, help="workflow config (config/paper.yaml)")
    args = parser.parse_args(argv[1:])
    from snakemake.utils import validate

    from .plan import Plan, PlanError

    config = yaml.safe_load(Path(args.config).read_text())
    validate(config, "workflow/schemas/config.schema.yaml")
    try:
        estimates = plan_estimates(Plan(config, check_memory=False))
    except PlanError as err:
        print(f"conspo memory: {err}", file=sys.stderr)
        return 2
    print(table(estimates))
    refused = [e for e in estimates if not e.fits]
    for e in refused:
        print(refusal(e), file=sys.stderr)
    return 1 if refused else 0
