"""The objective interface, the registry from config names to objectives, and exact group gradients.

Every method is written as a loss over per-rollout *sequence terms*:

    loss = F(terms_1, ..., terms_N; info)        terms_i = sequence_terms(rollout i)  (a few numbers per rollout)

Token-level surrogates (GRPO, DAPO, ...) have terms = per-rollout token sums and an F that is linear in them; sequence
score objectives (ConSPO, DisCO, ...) have terms = sequence scores and a non-linear F over each group. One backward
path serves both and is exact under any micro-batching:

    c_i = dF/dterms_i  on the whole optimizer-step batch (tiny tensors, all-gathered across ranks),
    then, micro-batch by micro-batch:  backward( sum_i sg(c_i) . terms_i ).

By the chain rule the accumulated gradient equals the gradient of F on the whole batch, whatever the micro-batch
size, the row order or the split across ranks (ARCHITECTURE.md, "Exact group gradients").
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

import torch
from torch import Tensor

from .batch import RolloutBatch, SequenceInfo
from .losses import group_advantages
from .typed import typed_value


class ParameterError(ValueError):
    """A hyperparameter of an objective has the wrong type or lies out of range; the message starts with its name
    (e.g. "margin_warmup: must be > 0, got 0"), so a config error can name the full key."""


def check_parameter(name: str, value, ok: bool, requirement: str) -> None:
    """Raise ParameterError("{name}: must be {requirement}, got {value}") unless `ok`. For objectives'
    `__post_init__`: every range check runs when the objective is built, so at the workflow's parse time too."""
    if not ok:
        raise ParameterError(f"{name}: must be {requirement}, got {value!r}")


class Objective:
    """Base class of every registered objective. Subclasses are dataclasses whose fields are the hyperparameters."""

    name: ClassVar[str] = ""
    n_terms: ClassVar[int] = 1
    linear: ClassVar[bool] = False  # F is linear in the terms: coefficients need no forward pass

    @property
    def needs_reference(self) -> bool:
        """Whether the batch must carry ref_logprobs (a KL term to a reference model)."""
        return False

    def inert_rows(self, batch: RolloutBatch) -> Tensor:
        """[n] bool: rows whose every sequence term is constant in the policy's log-probs or has a coefficient that is
        zero whatever the terms, so they add nothing to the gradient (default: none; exactness is tested for every
        registered objective). Rows whose computed coefficients are all zero are found without this."""
        return torch.zeros(len(batch), dtype=torch.bool, device=batch.rewards.device)

    def prepare(self, batch: RolloutBatch, context: "RolloutContext") -> RolloutBatch:
        """Method-specific work on a fresh rollout batch, before advantages are computed (default: none).

        The trainer calls it for every method. CLIPO reshapes rewards here; CEPO runs its teacher passes and stores
        token weights in `batch.extras`. `context` gives access to the policy's forward passes, so extra passes go
        through the same engine code as the policy's.
        """
        return batch

    def state_dict(self) -> dict:
        """State an objective carries from step to step (CLIPO's contrastive head and its optimizer); the trainer
        saves it with every checkpoint and hands it back to `load_state_dict` on resume. None by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (default: nothing to restore)."""

    def advantages(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        """Per-rollout advantages the trainer stores in the batch (GRPO's Eq. 1 unless a method says otherwise)."""
        return group_advantages(rewards, group_ids, "population")

    def sequence_terms(self, batch: RolloutBatch, logprobs: Tensor) -> Tensor:
        """Differentiable per-rollout terms [n, n_terms] from the current policy's response log-probs [n, T]."""
        raise NotImplementedError

    def loss(self, terms: Tensor, info: SequenceInfo, progress: float) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss to minimise from the whole step batch's terms [N, n_terms], and metrics to log."""
        raise NotImplementedError

    def config(self) -> dict:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


@dataclass
class RolloutContext:
    """What `Objective.prepare` may use: the policy's forward passes and the rollouts' text side.

    - `response_logprobs(batch) -> Tensor[n, T]`: no-grad log-probs of the rows' responses after their prompts
      (a RolloutBatch; CEPO passes its rows with hint tokens spliced into the prompts);
    - `pooled_hidden(batch) -> Tensor[n, H]`: no-grad final-layer hidden states averaged over each row's response;
      both run through conspo.forward.PolicyForward in micro-batches of the trainer's token budget, so extra passes
      over a large step batch stay within the memory of a training micro-batch;
    - `tokenizer`, the rows' gold `answers` and decoded `responses`, the current `step` (0 on the first optimizer
      step) and `progress`;
    - `collective`: the same all-gather the exact gradients use, for methods whose state must see the whole step
      batch on every rank (CLIPO's head); group ids must be unique across ranks.
    Under FSDP or ZeRO every rank must make the same passes: call them on every rank, with an empty batch if need be.
    """

    response_logprobs: Callable[[RolloutBatch], Tensor]
    pooled_hidden: Callable[[RolloutBatch], Tensor]
    tokenizer: object
    answers: list[str]
    responses: list[str]
    step: int = 0
    progress: float = 0.0
    collective: "Collective" = field(default_factory=lambda: SingleProcess())


# --------------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Objective]] = {}
_BUILTIN_MODULES = ("conspo.contrastive", "baselines")


def register_objective(name: str, **preset):
    """Class decorator: `@register_objective("grpo")` makes the class buildable as `build_objective("grpo", ...)`.

    `preset` registers the same class again under another name with some fields fixed, e.g.
    `register_objective("conspo_fixed_margin", margin_schedule="fixed")(ConSPO)`.
    """

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice")
        _REGISTRY[name] = (lambda **kw: cls(**{**preset, **kw})) if preset else cls
        _REGISTRY[name].objective_class = cls  # type: ignore[attr-defined]
        _REGISTRY[name].preset = dict(preset)  # type: ignore[attr-defined]
        if not preset:
            cls.name = name
        return cls

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_objectives() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def objective_parameters(name: str) -> dict[str, object]:
    """Default hyperparameters of a registered objective (preset values applied)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    cls = factory.objective_class  # type: ignore[attr-defined]
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return {**defaults, **factory.preset}  # type: ignore[attr-defined]


def typed_parameters(name: str, params: dict | None = None) -> dict:
    """`params` of the objective registered as `name`, each checked against its field's type and converted (an int
    or a numeric string for a float field becomes a float): unknown names raise KeyError, wrong types
    ParameterError, both naming the key."""
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name].objective_class  # type: ignore[attr-defined]
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise KeyError(f"method {name!r} has no parameter {unknown[0]!r}; its parameters: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    return {key: typed_value(key, hints[key], value, ParameterError) for key, value in params.items()}


def build_objective(name: str, params: dict | None = None) -> Objective:
    """The objective registered as `name` with hyperparameters `params`; unknown names or keys raise KeyError, values
    of the wrong type or out of range ParameterError, each naming the key."""
    typed = typed_parameters(name, params)
    objective = _REGISTRY[name](**typed)
    objective.name = name
    return objective


# --------------------------------------------------------------------------------------- exact group gradients


class Collective(Protocol):
    """How per-rollout tensors are combined across data-parallel ranks (single process: identity)."""

    world_size: int

    def gather(self, tensor: Tensor) -> tuple[Tensor, int]:
        """Concatenate this rank's rows with every other rank's (rank order); return it and this rank's offset."""
        ...


@dataclass
class SingleProcess:
    world_size: int = 1

    def gather(self, tensor: Tensor) -> tuple[Tensor, int]:
        return tensor, 0


class TorchDistributed:
    """Collective over the default torch.distributed process group (the one accelerate/torchrun set up).

    Ranks may hold different numbers of rows: sizes are exchanged first and rows padded to the largest.
    """

    def __init__(self):
        import torch.distributed as dist

        self._dist = dist
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()

    def gather(self, tensor: Tensor) -> tuple[Tensor, int]:
        dist = self._dist
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        full = torch.cat([p[:n] for p, n in zip(parts, sizes)])
        return full, sum(sizes[: self.rank])


def _gather_info(info: SequenceInfo, collective: Collective) -> SequenceInfo:
    gathered = {}
    for f in dataclasses.fields(SequenceInfo):
        value = getattr(info, f.name)
        full, _ = collective.gather(value.to(torch.float32) if value.dtype == torch.bool else value)
        gathered[f.name] = full.bool() if value.dtype == torch.bool else full
    return SequenceInfo(**gathered)


def _check_finite(terms: Tensor, where: str) -> None:
    bad = ~torch.isfinite(terms).all(-1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()[:8]
        raise FloatingPointError(f"non-finite sequence terms ({where}) at rows {rows}: refusing to back-propagate")


class Passes(Protocol):
    """How `accumulate_gradients` runs the policy over a rank's batch (conspo.forward.GradientPasses in the trainer;
    `RowChunks` for a plain log-prob function).

    - `split(batch)`: the micro-batches, as (row indices, rows) pairs; under sharded data parallelism every rank
      returns as many (some possibly empty), since each forward and backward communicates; an empty batch gives one
      empty micro-batch or none (then every rank must give none);
    - `logprobs(mb)`: response log-probs [n, T] of one micro-batch, with gradients when enabled;
    - `no_sync(last)`: the context one gradient micro-batch's forward and backward run in (DDP's no_sync but for the
      last one);
    - `backward(surrogate, last)`: back-propagate one micro-batch's surrogate, `last` marking the step's final one;
    - `skipped(rows)`: the rows left out of the gradient pass, for bookkeeping that must still see every row.
    """

    def split(self, batch: RolloutBatch) -> list[tuple[Tensor, RolloutBatch]]: ...

    def logprobs(self, mb: RolloutBatch) -> Tensor: ...

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, surrogate: Tensor, last: bool) -> None: ...

    def skipped(self, rows: RolloutBatch) -> None:
        """Rows left out of the gradient pass (`skip_zero_rows`), called on every rank when any rank skips some."""


@dataclass
class RowChunks:
    """`Passes` over a log-prob function: consecutive chunks of `rows` rows (all rows when None), plain backward."""

    logprob_fn: Callable[[RolloutBatch], Tensor]
    rows: int | None = None

    def split(self, batch: RolloutBatch) -> list[tuple[Tensor, RolloutBatch]]:
        if self.rows is not None and self.rows <= 0:
            raise ValueError(f"rows must be positive, got {self.rows}")
        size = self.rows or max(len(batch), 1)
        index = torch.arange(len(batch), device=batch.rewards.device)
        return [(idx, batch.select(idx)) for idx in torch.split(index, size)] or [(index, batch)]

    def logprobs(self, mb: RolloutBatch) -> Tensor:
        return self.logprob_fn(mb)

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, surrogate: Tensor, last: bool) -> None:
        surrogate.backward()

    def skipped(self, rows: RolloutBatch) -> None:
        pass


def gradient_pass_suffices(objective: Objective, micro_batches: int) -> bool:
    """Whether `accumulate_gradients` needs no pass over a rank's batch besides the gradient pass: a linear
    objective's coefficients need no terms, and a batch of one micro-batch keeps its graph while they are computed.
    The trainer then takes on-policy old log-probs from that pass too."""
    return objective.linear or micro_batches == 1


def accumulate_gradients(
    objective: Objective,
    batch: RolloutBatch,
    passes: Passes,
    *,
    progress: float,
    terms: Tensor | None = None,
    collective: Collective | None = None,
    skip_zero_rows: bool = True,
) -> tuple[float, dict[str, float]]:
    """Back-propagate the objective's loss on the whole step batch into the parameters' .grad, micro-batch by
    micro-batch (`passes.split`), exactly (see module docstring). Returns the loss value and the objective's metrics,
    with `skipped_rows`: the share of the step's rows (over all ranks) left out of the gradient pass.

    `terms`: this rank's no-grad terms at the current parameters if already known (e.g. from the behaviour policy's
    log-probs on the first strictly on-policy update). Otherwise a non-linear objective whose rank batch is one
    micro-batch takes them from the gradient pass itself (its graph is kept while the coefficients are computed);
    a larger batch gets an extra no-grad pass. Linear objectives need no terms for their coefficients.
    With several ranks, gradients are assumed to be averaged by DDP/FSDP/DeepSpeed, so each rank's share is scaled by
    the world size to make the average equal the whole-batch gradient.

    `skip_zero_rows`: whenever the coefficients are known before the gradient pass, a row whose every term has a zero
    coefficient or is constant in the log-probs (`Objective.inert_rows`: e.g. a degenerate group's row under GRPO,
    whose advantage is zero, when no KL term weighs it) adds exactly nothing to the gradient, so it is not forwarded
    with gradients at all; the live rows are split into micro-batches anew. If no row is left on any rank, one empty
    micro-batch still runs, so every parameter gets a zero gradient as before. A non-linear objective that takes its
    coefficients from the gradient pass (one micro-batch, no known terms) forwards every row.
    """
    collective = collective or SingleProcess()
    info = _gather_info(batch.info, collective)
    micro_batches = passes.split(batch) if terms is None and not objective.linear or not skip_zero_rows else None

    def coefficients(known: Tensor | None, where: str) -> tuple[Tensor, dict[str, float], Tensor]:
        # a linear objective's coefficients do not depend on the terms: computed in float64, then cast to the terms'
        # dtype
        probe = known if known is not None else torch.zeros(len(batch), objective.n_terms, dtype=torch.float64,
                                                            device=batch.rewards.device)
        full, offset = collective.gather(probe)
        if known is not None:
            _check_finite(full, where)
        leaf = full.clone().requires_grad_(True)
        loss, metrics = objective.loss(leaf, info, progress)
        (coeffs,) = torch.autograd.grad(loss, leaf, allow_unused=True, materialize_grads=True)
        return loss, metrics, coeffs[offset : offset + len(batch)] * collective.world_size

    if terms is None and not objective.linear and gradient_pass_suffices(objective, len(micro_batches)):
        ((idx, mb),) = micro_batches
        with passes.no_sync(True):
            graph = objective.sequence_terms(mb, passes.logprobs(mb))
            loss, metrics, coeffs = coefficients(_batch_order([(idx, graph.detach())]), "gradient pass")
            passes.backward((coeffs[idx].to(graph.dtype) * graph).sum(), True)
        return float(loss.detach()), {**metrics, "skipped_rows": 0.0}

    if terms is None and not objective.linear:
        with torch.no_grad():
            terms = _batch_order([(idx, objective.sequence_terms(mb, passes.logprobs(mb)))
                                  for idx, mb in micro_batches])
    loss, metrics, coeffs = coefficients(terms, "no-grad pass")
    skipped = 0.0
    if skip_zero_rows:  # every rank splits (and agrees on a micro-batch count) once more, over its live rows
        dead = coeffs.eq(0).all(-1) | objective.inert_rows(batch)
        everywhere, _ = collective.gather(dead.double()[:, None])
        skipped = float(everywhere.mean()) if len(everywhere) else 0.0
        live = torch.nonzero(~dead).flatten()
        micro_batches = [(live[idx], mb) for idx, mb in passes.split(batch.select(live))]
        if skipped > 0:
            passes.skipped(batch.select(torch.nonzero(dead).flatten()))
    seen = []
    for number, (idx, mb) in enumerate(micro_batches, start=1):
        last = number == len(micro_batches)
        with passes.no_sync(last):
            mb_terms = objective.sequence_terms(mb, passes.logprobs(mb))
            _check_finite(mb_terms.detach(), "gradient pass")
            passes.backward((coeffs[idx].to(mb_terms.dtype) * mb_terms).sum(), last)
        seen.append((idx, mb_terms.detach()))
    if terms is None:  # linear objective: report the loss at the terms the gradient pass saw (a skipped row's
        # coefficients are zero, so it adds nothing to a linear loss: zeros stand in for its terms)
        seen_terms = torch.zeros(len(batch), objective.n_terms, dtype=seen[0][1].dtype, device=seen[0][1].device)
        for idx, values in seen:
            seen_terms[idx] = values
        full, _ = collective.gather(seen_terms)
        with torch.no_grad():
            loss, metrics = objective.loss(full, info, progress)
    return float(loss.detach()), {**metrics, "skipped_rows": skipped}


def _batch_order(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Per-micro-batch rows [(row indices, values)] as one tensor in the batch's row order."""
    order = torch.cat([idx for idx, _ in parts])
    return torch.cat([values for _, values in parts])[torch.argsort(order)]
