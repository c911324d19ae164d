"""The run config of one RL training run (docs/design.md, "Run config"): parsed into dataclasses with defaults
filled, validated before any compute. Every error names the offending key (dotted path, e.g. `train.lr`).

    cfg = load_config("run.yaml")            # or parse_config(dict)
    steps = checkpoint_steps(cfg, n_prompts)  # the steps whose checkpoints the run writes
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .objective import ParameterError, build_objective
from .typed import typed_value
from .verifier import EXTRACTIONS


class ConfigError(ValueError):
    """A run config is malformed; the message starts with the dotted key at fault."""


@dataclass
class ModelConfig:
    path: str = ""  # a local checkpoint folder (save_pretrained); Hub models are downloaded into one first
    trust_remote_code: bool = False
    dtype: str = "float32"  # parameter dtype of the policy: float32 | bfloat16 | float16
    chat_template: bool = True  # render prompts with the tokenizer's chat template when it has one


@dataclass
class DataConfig:
    train: str = ""  # JSONL of records {id, problem, answer, source} (conspo prepare-data)
    limit: int | None = None  # use only the first `limit` records (smoke tests)
    n_prompts: int | None = None  # records the run must find (after `limit`): the steps and checkpoints planned on it


@dataclass
class MethodConfig:
    name: str = ""  # any registered objective (conspo.objective.available_objectives())
    params: dict = field(default_factory=dict)


@dataclass
class VLLMConfig:
    """TRL's VLLMGeneration settings (GPU rollouts with weight sync after every update)."""

    mode: str = "colocate"  # colocate | server
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    server_host: str = "0.0.0.0"
    server_port: int = 8000
    server_timeout: float = 240.0


@dataclass
class RolloutConfig:
    engine: str = "transformers"  # transformers (the live policy, CPU) | vllm (TRL VLLMGeneration, GPU)
    group_size: int = 8  # G rollouts per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    max_prompt_tokens: int = 1024  # longer prompts are dropped from the training set
    prompts_per_generation: int | None = None  # transformers engine: prompts per seeded generate call (None: all)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class TrainConfig:
    prompts_per_step: int = 256  # train batch in prompts; rollouts per step = prompts_per_step * group_size
    rollouts_per_step: int | None = None  # optional, the same batch in rollouts (must be prompts_per_step * G)
    mini_batches_per_step: int = 1  # >1: PPO-style several optimizer steps per rollout batch
    ppo_epochs: int = 1  # passes over the rollout batch per step
    # positions (rows x their longest prompt + response) per forward/backward, like verl's ppo_max_token_len_per_gpu;
    # at least rollout.max_prompt_tokens + rollout.max_new_tokens, so that any row fits
    max_tokens_per_micro_batch: int = 16384
    logit_chunk_tokens: int = 512  # response tokens per chunk through the output head (chunk x vocabulary logits)
    epochs: int = 4  # passes over the training prompts
    total_steps: int | None = None  # optional cap; None = epochs * ceil(n_prompts / prompts_per_step)
    lr: float = 2.0e-6
    lr_schedule: str = "constant"  # constant | linear | cosine (after warm-up)
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1.0e-8
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100  # checkpoint (and evaluation) cadence in steps; the last step is always saved
    save_every: int | None = None  # steps between resumable states besides those at checkpoints (None: only there)
    save_every_minutes: float | None = None  # ... or minutes of wall time since the last one (whichever comes first)
    gradient_checkpointing: bool = False  # recompute each decoder layer in backward (FSDP: the accelerate config's)
    skip_zero_rows: bool = True  # leave rows that add exactly nothing to the gradient out of the gradient pass


@dataclass
class VerifierConfig:
    extraction: str = "boxed"
    timeout: float = 5.0
    workers: int | None = None  # None: the CPUs the job was given (conspo.verifier.job_cpus)


@dataclass
class DynamicSamplingConfig:
    enabled: bool = False
    max_rounds: int = 3  # generation rounds per step, the first included


@dataclass
class OverlongShapingConfig:
    enabled: bool = False
    buffer: int = 4096  # L_buf
    penalty: float = 1.0


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong_shaping: OverlongShapingConfig = field(default_factory=OverlongShapingConfig)

    @property
    def rollouts_per_step(self) -> int:
        return self.train.prompts_per_step * self.rollout.group_size


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "rollout.engine": ("transformers", "vllm"),
    "rollout.vllm.mode": ("colocate", "server"),
    "train.lr_schedule": ("constant", "linear", "cosine"),
    "verifier.extraction": EXTRACTIONS,
}
POSITIVE = {"rollout.max_new_tokens", "rollout.max_prompt_tokens", "rollout.temperature",
            "rollout.prompts_per_generation", "rollout.vllm.tensor_parallel_size", "rollout.vllm.server_timeout",
            "train.prompts_per_step", "train.rollouts_per_step", "train.mini_batches_per_step", "train.ppo_epochs",
            "train.max_tokens_per_micro_batch", "train.logit_chunk_tokens", "train.epochs", "train.total_steps",
            "train.checkpoint_every", "train.save_every", "train.save_every_minutes", "train.lr", "data.limit",
            "data.n_prompts", "verifier.timeout", "verifier.workers", "dynamic_sampling.max_rounds",
            "overlong_shaping.buffer"}
NON_NEGATIVE = {"train.warmup_steps", "train.weight_decay", "train.adam_eps", "train.max_grad_norm",
                "overlong_shaping.penalty"}
RANGES = {  # key: (whether a value is allowed, the requirement in words)
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32) (numpy's seed range)"),
    "rollout.group_size": (lambda v: v >= 2, ">= 2 (a group of one rollout has no contrast: every advantage, so "
                                             "every gradient, is 0)"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.vllm.gpu_memory_utilization": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.vllm.server_port": (lambda v: 0 < v < 65536, "a TCP port (1-65535)"),
    "train.adam_betas": (lambda v: all(0 <= beta < 1 for beta in v), "two values in [0, 1)"),
}
RETIRED = {"train": {"micro_batch_size": "micro-batches are sized in tokens by train.max_tokens_per_micro_batch "
                                         "(docs/training.md, Memory)"}}


def _value(key: str, kind, raw):
    """`raw` checked (and lightly converted) against the annotation `kind`; ConfigError naming `key` otherwise."""
    if dataclasses.is_dataclass(kind):
        return _section(kind, raw, key)
    return typed_value(key, kind, raw, ConfigError)


def _section(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in set(raw) & set(RETIRED.get(prefix, {})):
        raise ConfigError(f"{prefix}.{name}: retired; {RETIRED[prefix][name]}")
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        scope = f" of {prefix}" if prefix else ""
        raise ConfigError(f"{where}: unknown key; known keys{scope}: {', '.join(sorted(names))}")
    values = {}
    for name in names & set(raw):
        key = f"{prefix}.{name}" if prefix else name
        value = _value(key, hints[name], raw[name])
        if value is not None and key in POSITIVE and value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
        if value is not None and key in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}: must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if value is not None and key in RANGES and not RANGES[key][0](value):
            raise ConfigError(f"{key}: must be {RANGES[key][1]}, got {value!r}")
        values[name] = value
    return cls(**values)


def parse_config(raw: dict, *, check_paths: bool = True) -> RunConfig:
    """Validate a raw config mapping and fill defaults. `check_paths=False` skips the existence checks of the model
    folder and the data file (for configs written before their inputs exist, e.g. by the workflow)."""
    cfg = _section(RunConfig, raw, "")
    required = (("model.path", cfg.model.path), ("data.train", cfg.data.train), ("method.name", cfg.method.name))
    for key, value in required:
        if not value:
            raise ConfigError(f"{key}: required")
    try:
        build_objective(cfg.method.name, cfg.method.params)
    except KeyError as err:  # unknown method or parameter: the registry's message names it
        key = "method.name" if "unknown method" in str(err) else "method.params"
        raise ConfigError(f"{key}: {err.args[0]}") from None
    except ParameterError as err:  # the message starts with the parameter's name
        raise ConfigError(f"method.params.{err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method.params: {err}") from None
    if check_paths:
        if not (Path(cfg.model.path) / "config.json").is_file():
            raise ConfigError(f"model.path: {cfg.model.path!r} is not a checkpoint folder (no config.json there)")
        if not Path(cfg.data.train).is_file():
            raise ConfigError(f"data.train: no such file {cfg.data.train!r}")
    _check_batch_sizes(cfg)
    return cfg


def _check_batch_sizes(cfg: RunConfig) -> None:
    t, g = cfg.train, cfg.rollout.group_size
    if t.rollouts_per_step is not None:
        if t.rollouts_per_step % g:
            raise ConfigError(f"train.rollouts_per_step: {t.rollouts_per_step} is not a multiple of "
                              f"rollout.group_size={g}: groups would be split")
        if t.rollouts_per_step != t.prompts_per_step * g:
            raise ConfigError(f"train.rollouts_per_step: {t.rollouts_per_step} != train.prompts_per_step * "
                              f"rollout.group_size = {t.prompts_per_step} * {g}")
    if t.prompts_per_step % t.mini_batches_per_step:
        raise ConfigError(f"train.mini_batches_per_step: {t.mini_batches_per_step} does not divide "
                          f"train.prompts_per_step={t.prompts_per_step}: mini-batches must hold whole groups")
    longest = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    if t.max_tokens_per_micro_batch < longest:
        raise ConfigError(f"train.max_tokens_per_micro_batch: {t.max_tokens_per_micro_batch} is less than the "
                          f"longest row, rollout.max_prompt_tokens + rollout.max_new_tokens = {longest}")
    p = cfg.rollout.prompts_per_generation
    if p is not None and t.prompts_per_step % p:
        raise ConfigError(f"rollout.prompts_per_generation: {p} does not divide train.prompts_per_step="
                          f"{t.prompts_per_step}")
    if cfg.overlong_shaping.enabled and cfg.overlong_shaping.buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError(f"overlong_shaping.buffer: {cfg.overlong_shaping.buffer} must be below "
                          f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}")


def check_world_size(cfg: RunConfig, world_size: int) -> None:
    """Checks that need the number of data-parallel ranks: every rank gets whole groups."""
    t = cfg.train
    shards = world_size * t.mini_batches_per_step
    if t.prompts_per_step % shards:
        raise ConfigError(f"train.prompts_per_step: {t.prompts_per_step} prompts cannot be split into whole groups "
                          f"over {world_size} ranks x {t.mini_batches_per_step} mini-batches")
    p = cfg.rollout.prompts_per_generation
    if p is not None and (t.prompts_per_step // world_size) % p:
        raise ConfigError(f"rollout.prompts_per_generation: {p} does not divide the "
                          f"{t.prompts_per_step // world_size} prompts of a rank with {world_size} ranks")


def load_config(path: str | Path, *, check_paths: bool = True) -> RunConfig:
    with open(path) as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} does not hold a mapping")
    return parse_config(raw, check_paths=check_paths)


def config_to_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain YAML-able data (tuples as lists)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


def total_steps(cfg: RunConfig, n_prompts: int) -> int:
    """Training steps of the run: epochs * ceil(n_prompts / prompts_per_step), capped by train.total_steps."""
    if n_prompts <= 0:
        raise ConfigError(f"data.train: no usable prompts (got {n_prompts})")
    steps = cfg.train.epochs * math.ceil(n_prompts / cfg.train.prompts_per_step)
    return min(steps, cfg.train.total_steps) if cfg.train.total_steps is not None else steps


def checkpoint_steps(cfg: RunConfig, n_prompts: int) -> list[int]:
    """Steps N whose checkpoint DIR/checkpoints/step-{N:06d} the run writes: every checkpoint_every, and the last."""
    last = total_steps(cfg, n_prompts)
    return sorted({*range(cfg.train.checkpoint_every, last + 1, cfg.train.checkpoint_every), last})
