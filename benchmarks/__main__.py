"""`python -m benchmarks NAME [args...]` runs `benchmarks/bench_NAME.py`'s `main(args)`; without NAME, lists them."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).parent


def available() -> dict[str, str]:
    """Benchmark name -> first line of its module docstring."""
    found = {}
    for path in sorted(HERE.glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem.removeprefix("bench_")] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str]) -> int:
    benchmarks = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [args...]\n\nbenchmarks:")
        for name, summary in benchmarks.items():
            print(f"  {name:<14} {summary}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in benchmarks:
        print(f"unknown benchmark {name!r}; available: {', '.join(benchmarks)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"benchmarks.bench_{name}").main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
