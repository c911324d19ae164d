"""Step-time cost of CLIPO and CEPO relative to GRPO on the same tiny rollout batch.

One "step" here is what the method adds to or does inside a trainer step after generation: `objective.prepare`
(CLIPO: a hidden-state pass and a head update; CEPO: two teacher passes) plus the objective's forward/backward over
the batch (`accumulate_gradients`). Generation and the optimizer step of the policy are the same for every method
and are left out. The policy is a tiny character-level Qwen2; the same batch and model serve every method.

    python -m benchmarks methods [--prompts 8] [--group-size 8] [--hidden 128] [--layers 2] [--max-tokens 512]
                                 [--repeats 10] [--warmup 1] [--device cpu|cuda] [--records DIR]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks.common import RECORDS, median_ms, print_table, time_interleaved, write_record
from conspo.batch import RolloutBatch
from conspo.forward import PolicyForward, output_head
from conspo.objective import RolloutContext, accumulate_gradients, build_objective

METHODS = {  # name -> (registered method, params): shaping and teacher passes switched on from the first step
    "grpo": ("grpo", {}),
    "clipo": ("clipo", {"head_warmup_steps": 0}),
    "cepo": ("cepo", {}),
}


class CharTokenizer:
    """One token per printable ASCII character; id 0 is padding."""

    alphabet = string.printable[:95]
    pad_token_id = 0
    vocab_size = len(alphabet) + 1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.alphabet.index(c) + 1 for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i - 1] for i in ids if i > 0)


def tiny_policy(tokenizer: CharTokenizer, seed: int = 0, hidden: int = 64, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config).float()


def policy_context(forward: PolicyForward, tokenizer, answers: list[str], responses: list[str],
                   step: int = 0) -> RolloutContext:
    """The context the trainer gives `prepare`, over the policy passes `forward`."""
    return RolloutContext(response_logprobs=lambda batch: forward.token_logprobs(batch)[0],
                          pooled_hidden=forward.pooled_hidden, tokenizer=tokenizer, answers=answers,
                          responses=responses, step=step)


def _pad(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), True
    return ids, mask


def policy_passes(model, max_tokens: int = 4096) -> PolicyForward:
    """The policy's passes (conspo.forward), micro-batches of at most `max_tokens` positions."""
    return PolicyForward(model, output_head(model), max_tokens=max_tokens, pad_id=CharTokenizer.pad_token_id)


def tiny_rollouts(model, tokenizer, correct: list[list[bool]], seed: int = 0):
    """A rollout batch of len(correct) prompts "a+b=?" with one group per prompt; a rollout is correct iff its boxed
    answer is the sum. Returns the batch, the gold answers and the response texts (one per row)."""
    generator = torch.Generator().manual_seed(seed)
    prompts, answers, responses, rewards, group_ids = [], [], [], [], []
    for group, verdicts in enumerate(correct):
        a, b = torch.randint(10, 99, (2,), generator=generator).tolist()
        for ok in verdicts:
            length = int(torch.randint(4, 20, (1,), generator=generator))
            filler = "".join(tokenizer.alphabet[i] for i in torch.randint(10, 62, (length,), generator=generator))
            answer = a + b if ok else a + b + int(torch.randint(1, 9, (1,), generator=generator))
            prompts.append(tokenizer.encode(f"{a}+{b}=?"))
            responses.append(f"{filler} \\boxed{{{answer}}}")
            answers.append(str(a + b))
            rewards.append(float(ok))
            group_ids.append(group)
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = (t.to(device) for t in _pad(prompts, left=True))
    response_ids, response_mask = (t.to(device) for t in _pad([tokenizer.encode(r) for r in responses], left=False))
    batch = RolloutBatch.create(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                                response_mask=response_mask, old_logprobs=torch.zeros(response_ids.shape),
                                rewards=torch.tensor(rewards, device=device),
                                group_ids=torch.tensor(group_ids, device=device))
    batch.old_logprobs = policy_passes(model).token_logprobs(batch)[0]
    return batch, answers, responses


def method_step(name: str, model, tokenizer, batch, answers, responses, max_tokens: int):
    """One timed call: prepare, advantages, then the objective's forward/backward through the policy."""
    method, params = METHODS[name]
    objective = build_objective(method, params)
    forward = policy_passes(model, max_tokens)

    def step():
        prepared = objective.prepare(batch, policy_context(forward, tokenizer, answers, responses))
        prepared = prepared.with_advantages(objective.advantages(prepared.rewards, prepared.group_ids))
        accumulate_gradients(objective, prepared, forward.gradient_passes(), progress=0.0)
        model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks methods", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512, help="token budget of a micro-batch")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time measures the work)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tokenizer = CharTokenizer()
    model = tiny_policy(tokenizer, hidden=args.hidden, layers=args.layers).to(args.device)
    # group g has about g/(prompts-1) of its rollouts correct: degenerate, single-correct and mixed groups all occur
    pattern = [[i < (g * (args.group_size + 1)) // args.prompts for i in range(args.group_size)]
               for g in range(args.prompts)]
    batch, answers, responses = tiny_rollouts(model, tokenizer, pattern)
    calls = {name: method_step(name, model, tokenizer, batch, answers, responses, args.max_tokens)
             for name in METHODS}
    times = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats)

    base, base_cpu = median_ms(times["grpo"]["wall"]), median_ms(times["grpo"]["cpu"])
    results = {name: {"registered": METHODS[name][0], "params": METHODS[name][1], "median_ms": median_ms(t["wall"]),
                      "ratio_to_grpo": median_ms(t["wall"]) / base, "cpu_median_ms": median_ms(t["cpu"]),
                      "cpu_ratio_to_grpo": median_ms(t["cpu"]) / base_cpu, "times_s": t}
               for name, t in times.items()}
    print_table(["method", "wall median ms", "wall ratio to GRPO", "CPU median ms", "CPU ratio to GRPO"],
                [[name, r["median_ms"], r["ratio_to_grpo"], r["cpu_median_ms"], r["cpu_ratio_to_grpo"]]
                 for name, r in results.items()])
    path = write_record("methods", directory=args.records, payload={
        "setup": {"rollouts": len(batch), "group_size": args.group_size, "prompt_tokens": batch.prompt_ids.shape[1],
                  "response_tokens": batch.response_ids.shape[1], "hidden": args.hidden, "layers": args.layers,
                  "max_tokens_per_micro_batch": args.max_tokens, "repeats": args.repeats, "warmup": args.warmup,
                  "device": args.device, "threads": args.threads},
        "results": results,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
