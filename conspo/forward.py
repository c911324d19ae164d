"""The policy's forward passes over rollout rows: one home for every pass the trainer, `RolloutContext` (the
objectives' `prepare` hooks) and the benchmarks make through a policy (docs/training.md, "Memory").

    forward = PolicyForward(model, output_head(policy), temperature=1.0, max_tokens=36864, chunk_tokens=512)
    old, entropy = forward.token_logprobs(batch, entropy=True)     # no grad, [N, T] each
    passes = forward.gradient_passes(old_from_pass=False)           # what accumulate_gradients runs
    accumulate_gradients(objective, batch, passes, progress=...)
    passes.stats.metrics(reduce)                                    # entropy, clip fractions

Any RolloutBatch goes: a subset of a step's rows (`batch.select(rows)`) as well as the whole.

Three things keep a pass's memory independent of the vocabulary and of the longest row of the step:
- micro-batches by a token budget (`token_budget_partition`): rows sorted by length, each micro-batch padded only
  to its own longest row, at most `max_tokens` positions (rows x width) each, the same number of micro-batches on
  every rank (ranks with fewer rows run empty ones, so FSDP's and ZeRO's collectives line up);
- rows packed as [prompt | response | padding] with plain causal attention: no padding mask ([b, 1, s, s]) is built,
  and the padding after a row's last token is never attended to by its real tokens;
- the output head applied only to the response tokens' final hidden states, in chunks of `chunk_tokens` tokens
  (`chunked_logprobs`): per-token log-probs and entropies without a [tokens, vocabulary] tensor, each chunk's logits
  recomputed in backward. The head runs inside the wrapped model's own forward (its forward is swapped for the
  call), so FSDP2's all-gather of the head, ZeRO's parameter hooks and DDP's reducer see an ordinary forward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from .batch import RolloutBatch

CLIP_LOW, CLIP_HIGH = 0.8, 1.2  # the token-ratio band the clip fractions report
VOCAB_BLOCK = 8192  # vocabulary rows per product when a narrow (bf16) head's weight gradient is summed in float32


# --------------------------------------------------------------------------------------------- partition


def token_budget_partition(lengths: list[int], max_tokens: int, parts: int | None = None) -> list[list[int]]:
    """Rows grouped into micro-batches of at most `max_tokens` computed positions (rows x the longest row's length).

    Rows are sorted longest first (ties by row index) and packed greedily, so each micro-batch holds rows of similar
    length; a row longer than the budget gets a micro-batch of its own. `parts` (at least the greedy count) asks for
    exactly that many: the costliest micro-batches are halved until there are enough, and empty ones are appended
    when there are fewer rows than `parts`.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda r: (-lengths[r], r))
    groups: list[list[int]] = []
    for row in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(row)
        else:
            groups.append([row])
    if parts is None:
        return groups
    if parts < len(groups):
        raise ValueError(f"asked for {parts} micro-batches, but the budget needs {len(groups)}")
    while len(groups) < parts and any(len(g) > 1 for g in groups):
        costliest = max((g for g in groups if len(g) > 1), key=lambda g: len(g) * lengths[g[0]])
        at = groups.index(costliest)
        half = len(costliest) // 2
        groups[at:at + 1] = [costliest[:half], costliest[half:]]
    return groups + [[] for _ in range(parts - len(groups))]


def split_by_tokens(batch: RolloutBatch, max_tokens: int,
                    agree: Callable[[int], int] = lambda k: k) -> list[tuple[Tensor, RolloutBatch]]:
    """The token-budget micro-batches of `batch`: (row indices, those rows padded to their own widths) pairs, as
    many as `agree` returns for this rank's own count (every rank's maximum under data parallelism), at least one."""
    lengths = (batch.prompt_mask.sum(-1) + batch.response_mask.sum(-1)).tolist()
    groups = token_budget_partition(lengths, max_tokens)
    groups = token_budget_partition(lengths, max_tokens, agree(max(len(groups), 1)))  # an empty batch: one empty
    device = batch.response_ids.device
    out = []
    for group in groups:
        rows = torch.tensor(group, dtype=torch.long, device=device)
        out.append((rows, batch.select(rows).trimmed()))
    return out


def computed_positions(lengths: list[int], groups: list[list[int]]) -> int:
    """Positions a forward pass computes for `groups`: each micro-batch is padded to its own longest row."""
    return sum(len(g) * max((lengths[r] for r in g), default=0) for g in groups)


# --------------------------------------------------------------------------------------------- the head


def _chunk_logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """Logits of one chunk in float32 (float64 for a float64 head), divided by the sampling temperature (as the
    policy samples). The product runs in the head's dtype, as the model's own head would."""
    logits = torch.mm(hidden, weight.t()).to(torch.promote_types(weight.dtype, torch.float32))
    if temperature > 0 and temperature != 1.0:
        logits.div_(temperature)
    return logits


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(h W^T / temperature)[target] and the entropy of that softmax, chunk by chunk; backward recomputes
    each chunk's logits. Entropies are returned without gradient (a metric here)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int):
        wide = torch.promote_types(weight.dtype, torch.float32)
        n = hidden.shape[0]
        logprobs = torch.empty(n, dtype=wide, device=hidden.device)
        entropy, lse = torch.empty_like(logprobs), torch.empty_like(logprobs)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                z = _chunk_logits(hidden[s:s + chunk], weight, temperature)
                top = z.amax(-1, keepdim=True)
                p = (z - top).exp_()  # unnormalised softmax
                total = p.sum(-1)
                lse[s:s + chunk] = top.squeeze(-1) + total.log()
                logprobs[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
                entropy[s:s + chunk] = lse[s:s + chunk] - torch.einsum("ij,ij->i", p, z) / total  # H = lse - E_p[z]
                del z, p
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        scale = 1.0 / temperature if temperature > 0 else 1.0
        wide = lse.dtype
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        # the weight's gradient is summed over chunks in float32 (float64 for a float64 head)
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                h, g = hidden[s:s + chunk], grad_logprobs[s:s + chunk].to(wide) * scale
                # d logp_y / dz = onehot(y) - softmax(z): built in place in the recomputed logits
                dz = _chunk_logits(h, weight, temperature).sub_(lse[s:s + chunk, None]).exp_().mul_(-g[:, None])
                dz = dz.scatter_add_(-1, targets[s:s + chunk, None], g[:, None]).to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[s:s + chunk] = torch.mm(dz, weight)
                if grad_weight is not None and dz.dtype == wide:
                    grad_weight.addmm_(dz.t(), h)
                elif grad_weight is not None:  # a narrow product, summed in float32 a vocabulary block at a time
                    for v in range(0, weight.shape[0], VOCAB_BLOCK):
                        grad_weight[v:v + VOCAB_BLOCK] += torch.mm(dz[:, v:v + VOCAB_BLOCK].t(), h)
                del dz
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                     chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Per-token log-probs [n] (differentiable in `hidden` and `weight`) and entropies [n] (no gradient), float32
    (float64 for a float64 head), of the output head `weight` [V, H] applied to final hidden states `hidden` [n, H]
    at the sampling `temperature` (0 or 1: none), never holding more than `chunk` x V logits."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    return _ChunkedLogprobs.apply(hidden.to(weight.dtype), weight, targets, float(temperature), int(chunk))


def output_head(model: nn.Module) -> nn.Linear:
    """The policy's output projection (tied or not), the module whose forward the passes swap."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(f"{type(model).__name__}: the output head must be a bias-free nn.Linear, got {head!r}")
    return head


@dataclass
class _HeadCall:
    """What the swapped head computes in one model call, and what it hands back besides its output."""

    index: Tensor  # [n] flat positions (row * width + position) whose hidden state predicts a response token
    targets: Tensor  # [n] the response tokens
    temperature: float
    chunk: int
    keep_hidden: bool
    logprobs: Tensor | None = None  # [n]: the model call's output
    entropy: Tensor | None = None  # [n]
    hidden: Tensor | None = None  # [n, H] the response tokens' final hidden states, when keep_hidden


@contextlib.contextmanager
def _head_computes(head: nn.Linear, call: _HeadCall):
    """For the duration of one model call, `head(hidden [b, s, H])` returns the chosen tokens' log-probs [n] instead
    of logits [b, s, V]. The swap is of the module's forward only: its hooks (FSDP2, ZeRO-3) still run around it."""

    def forward(hidden: Tensor) -> Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        logprobs, call.entropy = chunked_logprobs(flat[call.index], head.weight, call.targets, call.temperature,
                                                  call.chunk)
        if call.keep_hidden:  # at the response tokens' own positions, one after those that predict them
            call.hidden = flat[call.index + 1].detach()
        return logprobs

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # the class's forward again


# --------------------------------------------------------------------------------------------- rows


def packed_rows(mb: RolloutBatch, pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A micro-batch as model input: each row [prompt | response] from position 0, padded on the right to the
    micro-batch's longest row. Returns input ids [b, s], position ids [b, s], and for every real response token
    (row-major) the flat position that predicts it [n] and the token itself [n]."""
    prompt_len = mb.prompt_mask.sum(-1)
    response_len = mb.response_mask.sum(-1)
    if bool((prompt_len == 0).any()):
        raise ValueError("every row needs at least one prompt token: the first response token is predicted from it")
    total = prompt_len + response_len
    width = int(total.max())
    both = torch.cat([mb.prompt_ids, mb.response_ids], dim=1)
    # row r's real tokens start after its prompt's left padding
    start = mb.prompt_ids.shape[1] - prompt_len
    columns = (torch.arange(width, device=both.device)[None] + start[:, None]).clamp_max(both.shape[1] - 1)
    ids = both.gather(1, columns)
    ids = torch.where(torch.arange(width, device=both.device)[None] < total[:, None], ids, pad_id)
    positions = torch.arange(width, device=both.device).expand_as(ids)
    rows, steps = torch.nonzero(mb.response_mask, as_tuple=True)
    index = rows * width + prompt_len[rows] - 1 + steps
    return ids, positions, index, mb.response_ids[rows, steps]


# --------------------------------------------------------------------------------------------- bookkeeping


@dataclass
class ForwardStats:
    """Token counts the metrics line reports, summed over a step's passes on this rank: entropy of the behaviour
    policy, and how many tokens' ratio pi/pi_old fell below / above the clip band in the gradient passes."""

    entropy_sum: float = 0.0
    entropy_tokens: float = 0.0
    ratio_low: float = 0.0
    ratio_high: float = 0.0
    ratio_tokens: float = 0.0

    def add_entropy(self, entropy: Tensor, mask: Tensor) -> None:
        self.entropy_sum += float(entropy[mask].sum())
        self.entropy_tokens += float(mask.sum())

    def add_ratios(self, logprobs: Tensor, old: Tensor, mask: Tensor) -> None:
        ratio = torch.exp(logprobs.detach() - old)[mask]
        self.ratio_low += float((ratio < CLIP_LOW).sum())
        self.ratio_high += float((ratio > CLIP_HIGH).sum())
        self.ratio_tokens += float(ratio.numel())

    def merge(self, other: "ForwardStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def metrics(self, total: Callable[[Tensor], Tensor] = lambda t: t) -> dict[str, float]:
        """entropy, clip_frac_low, clip_frac_high; `total` sums the counts over ranks."""
        s = total(torch.tensor([self.entropy_sum, self.entropy_tokens, self.ratio_low, self.ratio_high,
                                self.ratio_tokens], dtype=torch.float64)).tolist()
        nan = float("nan")
        return {"entropy": s[0] / s[1] if s[1] else nan, "clip_frac_low": s[2] / s[4] if s[4] else nan,
                "clip_frac_high": s[3] / s[4] if s[4] else nan}


# --------------------------------------------------------------------------------------------- passes


@dataclass
class PolicyForward:
    """Forward passes of one model (the policy, or the reference) over rollout rows.

    `model`: what is called (the DDP/FSDP/DeepSpeed-wrapped module or a plain one); `head`: the unwrapped policy's
    output projection (`output_head`). `agree(k)`: the number of micro-batches every rank runs, given this rank's
    `k` (the maximum over ranks; identity on one process). `no_sync(last)`: the context a gradient micro-batch's
    forward and backward run in (DDP's no_sync except on the last); `backward(surrogate, last)`: how it is
    back-propagated (accelerate's backward; `last` marks DeepSpeed's accumulation boundary).
    """

    model: nn.Module
    head: nn.Linear
    temperature: float = 1.0
    max_tokens: int = 16384
    chunk_tokens: int = 512
    pad_id: int = 0
    agree: Callable[[int], int] = lambda k: k
    no_sync: Callable[[bool], contextlib.AbstractContextManager] = lambda last: contextlib.nullcontext()
    backward: Callable[[Tensor, bool], None] = lambda surrogate, last: surrogate.backward()

    def split(self, batch: RolloutBatch) -> list[tuple[Tensor, RolloutBatch]]:
        return split_by_tokens(batch, self.max_tokens, self.agree)

    def run(self, mb: RolloutBatch, keep_hidden: bool = False) -> _HeadCall:
        """One model call on a micro-batch: log-probs [n_tokens] (with grad when enabled) as the model's output,
        entropies (and final hidden states) of the response tokens in the returned record. An empty micro-batch runs
        a row of padding, so every rank makes the same collective calls, and returns nothing."""
        if len(mb):
            ids, positions, index, targets = packed_rows(mb, self.pad_id)
        else:  # two padding tokens, the first predicting the second
            device = mb.response_ids.device
            ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=device)
            positions = torch.arange(2, device=device)[None]
            index, targets = torch.zeros(1, dtype=torch.long, device=device), ids[0, 1:]
        call = _HeadCall(index, targets, self.temperature, self.chunk_tokens, keep_hidden)
        with _head_computes(self.head, call):
            out = self.model(input_ids=ids, position_ids=positions, use_cache=False)
        call.logprobs = out.logits if len(mb) else out.logits[:0] + 0 * out.logits.sum()
        return call

    def logprobs(self, mb: RolloutBatch) -> tuple[Tensor, Tensor]:
        """Response log-probs and entropies of one micro-batch, [n, T] each (zero outside the response mask)."""
        call = self.run(mb)
        return _unpack(call.logprobs, mb.response_mask), _unpack(call.entropy, mb.response_mask)

    def token_logprobs(self, batch: RolloutBatch, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """No-grad response log-probs (and entropies) of every row, [N, T], micro-batch by micro-batch; float32
        (float64 for a float64 head)."""
        logprobs = torch.zeros(batch.response_ids.shape, dtype=torch.promote_types(self.head.weight.dtype,
                                                                                   torch.float32),
                               device=batch.response_ids.device)
        entropies = torch.zeros_like(logprobs) if entropy else None
        with torch.no_grad():
            for rows, mb in self.split(batch):
                lp, ent = self.logprobs(mb)
                logprobs[rows, :lp.shape[1]] = lp
                if entropy:
                    entropies[rows, :ent.shape[1]] = ent
        return logprobs, entropies

    def pooled_hidden(self, batch: RolloutBatch) -> Tensor:
        """No-grad final-layer hidden states of each row's response tokens, averaged, [N, H] float32."""
        pooled = torch.zeros(len(batch), self.head.in_features, dtype=torch.float32, device=batch.response_ids.device)
        with torch.no_grad():
            for rows, mb in self.split(batch):
                call = self.run(mb, keep_hidden=True)
                if len(mb):
                    owner = torch.nonzero(mb.response_mask, as_tuple=True)[0]
                    sums = torch.zeros(len(mb), pooled.shape[1], device=pooled.device).index_add_(
                        0, owner, call.hidden.float())
                    pooled[rows] = sums / mb.response_mask.sum(-1, keepdim=True)
        return pooled

    def gradient_passes(self, old_from_pass: bool = False, on_policy: bool = False) -> "GradientPasses":
        """The passes `accumulate_gradients` runs for one optimizer step (conspo.objective.Passes)."""
        return GradientPasses(self, old_from_pass, on_policy)


def _unpack(values: Tensor, mask: Tensor) -> Tensor:
    """Per-token values [n_tokens] (row-major over `mask`) back into [rows, T], zero elsewhere."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)


@dataclass
class GradientPasses:
    """One optimizer step's passes through the policy (conspo.objective.Passes), with the step's bookkeeping.

    In gradient passes every micro-batch's token ratios pi/pi_old are counted. `old_from_pass`: the first, strictly
    on-policy update of a step whose separate no-grad pass was skipped: the old log-probs (and the entropies) are
    this pass's own, detached, and are written into the micro-batch before the objective reads it. `on_policy`: no
    optimizer step since the rollouts (every ratio is 1; implied by `old_from_pass`)."""

    forward: PolicyForward
    old_from_pass: bool = False
    on_policy: bool = False
    stats: ForwardStats = field(default_factory=ForwardStats)

    def split(self, batch: RolloutBatch) -> list[tuple[Tensor, RolloutBatch]]:
        return self.forward.split(batch)

    def logprobs(self, mb: RolloutBatch) -> Tensor:
        lp, entropy = self.forward.logprobs(mb)
        if torch.is_grad_enabled():
            if self.old_from_pass:
                mb.old_logprobs = lp.detach()
                self.stats.add_entropy(entropy, mb.response_mask)
            self.stats.add_ratios(lp, mb.old_logprobs, mb.response_mask)
        return lp

    def no_sync(self, last: bool):
        return self.forward.no_sync(last)

    def backward(self, surrogate: Tensor, last: bool) -> None:
        self.forward.backward(surrogate, last)

    def skipped(self, rows: RolloutBatch) -> None:
        """Rows the update leaves out (conspo.objective.accumulate_gradients' `skip_zero_rows`). When this pass stands
        in for the behaviour policy's, their entropies still come from a no-grad pass, so the logged entropy covers
        every row (the cost of a forward without activations kept, against a forward and backward saved). On-policy
        their ratios are exactly 1, inside the clip band, and are counted so; off-policy (a later mini-batch or
        epoch) the clip fractions cover the forwarded tokens only."""
        if self.old_from_pass:
            _, entropy = self.forward.token_logprobs(rows, entropy=True)
            self.stats.add_entropy(entropy, rows.response_mask)
        if self.old_from_pass or self.on_policy:
            self.stats.ratio_tokens += float(rows.response_mask.sum())
