"""Check the lock files against pyproject.toml and against an installed environment.

Invariant: ``requirements.lock`` (written by ``uv pip compile``, see ``make lock``) pins one version of every
package em installs, for every platform (``--universal``: CUDA packages carry Linux markers). pyproject.toml
keeps compatible ranges; the lock must satisfy them, and an environment made by ``make setup`` must hold
exactly the locked version of every locked package it has, and no unlocked package.

    python tools/lockfile.py check-pyproject requirements.lock   # the lock satisfies pyproject.toml
    python tools/lockfile.py check-env requirements.lock          # this interpreter's packages == the lock
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKED_EXTRAS = ("dev", "bench", "smollm2", "tracking")  # the vllm extra has its own environment and lock
NEVER_LOCKED = {"em", "pip"}  # the project itself (editable) and the installer (pinned in the Makefile)


@dataclass
class Pin:
    name: str
    version: Version
    marker: Marker | None
    via: set[str] = field(default_factory=set)
    line: int = 0

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def parse_lock(path: Path) -> dict[str, list[Pin]]:
    """``name -> pins`` (a universal lock may pin a package twice, under exclusive markers)."""
    pins: dict[str, list[Pin]] = {}
    current: Pin | None = None
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            via = line.lstrip("#").strip()
            if current is not None and via.startswith("via"):
                via = via.removeprefix("via").strip()
            if current is not None and via and not via.startswith(("-r ", "-c ", "This file", "uv ")):
                current.via.add(canonicalize_name(via.split()[0]))
            continue
        if line.startswith("-"):
            continue  # options such as --index-url
        try:
            req = Requirement(line)
            (spec,) = req.specifier
        except Exception as exc:
            raise SystemExit(
                f"{path}:{number}: expected 'name==version [; marker]', got {line!r} ({exc})"
            ) from exc
        if spec.operator != "==":
            raise SystemExit(f"{path}:{number}: {req.name} is not pinned with == ({line!r})")
        current = Pin(canonicalize_name(req.name), Version(spec.version), req.marker, line=number)
        pins.setdefault(current.name, []).append(current)
    return pins


def applicable(pins: dict[str, list[Pin]]) -> dict[str, Pin]:
    """The one pin per package whose marker holds on this interpreter and platform."""
    out = {}
    for name, options in pins.items():
        hits = [p for p in options if p.applies()]
        if len(hits) > 1:
            raise SystemExit(
                f"lock pins {name} {len(hits)} times for this platform: {[str(p.version) for p in hits]}"
            )
        if hits:
            out[name] = hits[0]
    return out


def project_requirements(pyproject: Path) -> list[tuple[str, Requirement]]:
    """``(where, requirement)`` for the dependencies and every locked extra of pyproject.toml."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project.get("dependencies", [])]
    for extra in LOCKED_EXTRAS:
        for r in project.get("optional-dependencies", {}).get(extra, []):
            found.append((f"optional-dependencies.{extra}", Requirement(r)))
    return found


def check_pyproject(lock: Path, pyproject: Path) -> list[str]:
    """Problems: a requirement of pyproject.toml that the lock lacks or pins outside its range."""
    pins = parse_lock(lock)
    problems = []
    for where, req in project_requirements(pyproject):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"pyproject.toml [{where}] {req}: not in {lock.name} (run `make lock`)")
            continue
        for pin in pins[name]:
            if not req.specifier.contains(pin.version, prereleases=True):
                problems.append(
                    f"pyproject.toml [{where}] {req}: {lock.name} line {pin.line} pins {pin.version} "
                    "outside that range (run `make lock`)"
                )
    return problems


def installed() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}


def check_env(lock: Path, allow_missing: set[str] = frozenset()) -> list[str]:
    """Problems: an installed package whose version differs from the lock, or that the lock lacks; a locked
    package that is missing (except CUDA-only ones under a CPU build of torch, and ``allow_missing``)."""
    pins = applicable(parse_lock(lock))
    have = installed()
    problems = []
    for name, version in sorted(have.items()):
        if name in NEVER_LOCKED:
            continue
        if name not in pins:
            problems.append(f"{name}=={version} is installed but not in {lock.name}")
        elif Version(version.public) != pins[name].version and version != pins[name].version:
            problems.append(
                f"{name}=={version} is installed; {lock.name} line {pins[name].line} pins {pins[name].version}"
            )
    # A CPU build of torch (local label +cpu) does not need the CUDA wheels a universal lock pins for Linux.
    cpu_torch = "torch" in have and (have["torch"].local or "").startswith("cpu")
    excused = {"torch"} if cpu_torch else set()
    missing = {n for n in pins if n not in have and n not in NEVER_LOCKED}
    changed = True
    while (
        changed
    ):  # excuse packages needed only by excused ones (cuda-pathfinder via cuda-bindings via torch)
        changed = False
        for name in sorted(missing - excused):
            if pins[name].via and pins[name].via <= excused:
                excused.add(name)
                changed = True
    for name in sorted(missing - excused - set(allow_missing)):
        problems.append(
            f"{name}=={pins[name].version} is in {lock.name} (line {pins[name].line}) but not installed"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["check-pyproject", "check-env"])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument(
        "--allow-missing", default="", help="comma-separated locked packages removed on purpose"
    )
    args = parser.parse_args(argv)
    if args.command == "check-pyproject":
        problems = check_pyproject(args.lock, args.pyproject)
    else:
        allowed = {canonicalize_name(n) for n in args.allow_missing.split(",") if n}
        problems = check_env(args.lock, allowed)
    for problem in problems:
        print(f"{args.command}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.command}: {args.lock} OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
