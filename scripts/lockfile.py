"""The project's locks of tested versions (requirements/*.txt): what each was resolved from, and whether it still
agrees with pyproject.toml.

    python scripts/lockfile.py stamp requirements/cpu.txt cpu,dev    # after `uv pip compile` wrote the file
    python scripts/lockfile.py check requirements/cpu.txt            # exit 1 and say why when stale

A lock's first line records the extras it was resolved for and a digest of pyproject.toml's requirement lists
(`requires-python`, `dependencies`, the locked extras). Changing any of them (opening a range, adding a package)
without running `make lock` makes `check`, and tests/test_lock.py, fail.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
STAMP = re.compile(r"^# lock of pyproject\.toml extras=(?P<extras>[\w,-]*) inputs-sha256=(?P<digest>[0-9a-f]{64})$")
# The platform every lock is resolved for (scripts/lock.sh passes the same to uv).
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def project(pyproject: Path = ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(Path(pyproject).read_text())["project"]


def requirements(extras: list[str], pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The requirements a lock for `extras` must satisfy: the base dependencies plus those extras'."""
    spec = project(pyproject)
    lines = list(spec["dependencies"])
    for extra in extras:
        if extra not in spec.get("optional-dependencies", {}):
            raise KeyError(f"pyproject.toml has no extra {extra!r}")
        lines += spec["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def inputs_digest(extras: list[str], pyproject: Path = ROOT / "pyproject.toml") -> str:
    spec = project(pyproject)
    inputs = {"requires-python": spec.get("requires-python"), "dependencies": spec["dependencies"],
              "extras": {extra: spec["optional-dependencies"][extra] for extra in sorted(extras)}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def read_lock(path: Path) -> tuple[list[str], str, dict[str, Version]]:
    """(extras, recorded digest, {canonical name: pinned version}) of a lock file."""
    lines = Path(path).read_text().splitlines()
    stamp = STAMP.match(lines[0]) if lines else None
    if stamp is None:
        raise ValueError(f"{path}: first line is not a lock stamp (run `make lock`)")
    pins = {}
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line.replace(" \\", ""))
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise ValueError(f"{path}:{number}: {line!r} is not an exact pin")
        pins[canonicalize_name(requirement.name)] = Version(specifiers[0].version)
    return stamp["extras"].split(","), stamp["digest"], pins


def disagreements(path: Path, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Why a lock no longer stands for pyproject.toml (empty when it does)."""
    extras, digest, pins = read_lock(path)
    problems = []
    if digest != inputs_digest(extras, pyproject):
        problems.append(f"{path}: pyproject.toml's requirements changed since this lock was resolved "
                        f"(extras {','.join(extras)}): run `make lock`")
    for requirement in requirements(extras, pyproject):
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{path}: {requirement} is required by pyproject.toml but not locked")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{path}: locks {name}=={pins[name]}, outside pyproject.toml's {requirement}")
    return problems


def stamp(path: Path, extras: list[str]) -> None:
    """Put the stamp line on a freshly compiled lock (replacing uv's own header comment)."""
    body = [line for line in Path(path).read_text().splitlines() if not STAMP.match(line)]
    first = f"# lock of pyproject.toml extras={','.join(extras)} inputs-sha256={inputs_digest(extras)}"
    Path(path).write_text("\n".join([first, *body]) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "stamp":
        stamp(Path(argv[1]), argv[2].split(","))
        return 0
    if len(argv) == 2 and argv[0] == "check":
        problems = disagreements(Path(argv[1]))
        print("\n".join(problems) or f"{argv[1]}: agrees with pyproject.toml")
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
