#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv, from nothing, with pip only.
# Idempotent: a stamp holding the hash of the install inputs skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.conspo-setup-stamp"

# --browser: the report test drives Debian's headless Chromium (no browser download of its own works offline).
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium + chromium-driver for the report test"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[setup] chromium is missing and cannot be installed here (needs root + apt); the report test will skip" >&2
  fi
fi
# The lock of tested versions (requirements/*.txt, `make lock`): every package is installed at its locked version.
lock=${CONSPO_LOCK:-requirements/cpu.txt}
extras=${CONSPO_EXTRAS:-cpu,dev}
want=$(cat pyproject.toml scripts/setup.sh "$lock" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
# torch first, at its locked build (the CPU lock names the CPU build this machine carries in /opt/wheels; a torch
# resolved without it would be a CUDA build of several GB).
$pip install -q -c "$lock" torch
$pip install -q -c "$lock" -e ".[${extras}]"
# The slurm executor plugin pins numpy>=2.4.5, which vLLM's mistral-common (numpy<2.4 on Python<=3.12) forbids;
# it runs fine on numpy 2.3 (its dry runs are tested here), so it goes in without its pins; its other
# requirements are the project's own dependencies.
$pip install -q --no-deps "snakemake-executor-plugin-slurm==${SLURM_PLUGIN_VERSION:-2.8.0}"
# PyPI's torchvision/torchaudio fail to import beside this torch and break transformers' lazy imports.
$pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "$want" > "$stamp"
echo "[setup] done"
