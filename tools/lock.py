"""Write requirements.lock: exact pins of nmt-pipeline's dependency closure as installed here.

Walks the installed project's requirements (`importlib.metadata`) with its `dev` extra, evaluates
each requirement's markers for this interpreter and platform, follows the extras a requirement
asks for, and pins every package reached at the version installed now. Refresh it after the suite
passes in an environment set up as the README says:

    python tools/lock.py -o requirements.lock

Without -o it prints the lock. It fails (and writes nothing) if a package in the closure is not
installed, or if the installed project's requirements differ from pyproject.toml (reinstall it
with the README's set-up line first).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "nmt-pipeline"
EXTRAS = ("dev",)
REPO = Path(__file__).resolve().parent.parent
SETUP_LINE = 'pip install torch=={torch} -c requirements.lock -e ".[dev]"'  # README, .ci/run


def requirements_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    """The requirements of installed `name` that apply here with `extras` requested."""
    out = []
    for line in metadata.requires(name) or []:
        req = Requirement(line)
        if req.marker is None or any(
            req.marker.evaluate({"extra": extra}) for extra in ("", *sorted(extras))
        ):
            out.append(req)
    return out


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """Canonical name -> installed public version of every package `project[extras]` needs here."""
    pins: dict[str, str] = {}
    missing: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(project), frozenset(extras), None)]
    while todo:
        name, wanted, parent = todo.pop()
        new = {e for e in ("", *wanted) if (name, e) not in seen}
        if not new:
            continue
        seen.update((name, e) for e in new)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{name} (needed by {parent})")
            continue
        if name != canonicalize_name(project):
            # The public version: a local label (torch's +cpu) names a build, not a release.
            pins[name] = Version(version).public
        for req in requirements_of(name, frozenset(e for e in new if e)):
            todo.append((canonicalize_name(req.name), frozenset(req.extras), name))
    if missing:
        raise SystemExit("not installed: " + ", ".join(sorted(missing)))
    return pins


def requirement_keys(lines: list[str], extras: list[str]) -> set[tuple[str, ...]]:
    """(extra or "", name, its extras, specifier) for each of `lines`, markers resolved."""
    keys = set()
    for line in lines:
        req = Requirement(line)
        group = ""
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            group = next((e for e in extras if req.marker.evaluate({"extra": e})), str(req.marker))
        extras_of = ",".join(sorted(canonicalize_name(e) for e in req.extras))
        keys.add((group, canonicalize_name(req.name), extras_of, str(req.specifier)))
    return keys


def check_installed_project_is_current() -> None:
    """Fail if the installed project's requirements are not pyproject.toml's."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library; skip the check
        return
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    declared = [*project["dependencies"]]
    for extra, reqs in optional.items():
        for line in reqs:
            req = Requirement(line)
            marker = f'extra == "{extra}"'
            if req.marker is not None:
                marker = f"({req.marker}) and {marker}"
            req.marker = None
            declared.append(f"{req}; {marker}")
    extras = [canonicalize_name(e) for e in optional]
    wanted = requirement_keys(declared, extras)
    installed = requirement_keys(metadata.requires(PROJECT) or [], extras)
    if installed != wanted:
        differ = sorted(" ".join(filter(None, k)) for k in installed ^ wanted)
        raise SystemExit(
            f"the installed {PROJECT} does not require what pyproject.toml says "
            f"({'; '.join(differ)}): reinstall it first: "
            + SETUP_LINE.format(torch=Version(metadata.version("torch")).public)
        )


def render(pins: dict[str, str]) -> str:
    header = f"""\
# requirements.lock: the exact versions the test suite passed with, for {PROJECT}
# and its {", ".join(EXTRAS)} extra, transitively. Made by tools/lock.py from the installed
# packages' metadata, with markers evaluated for Python {platform.python_version()} on
# {sys.platform} {platform.machine()}. Do not edit by hand.
#
# The set-up line (README.md, Quick start; .ci/run) uses it as pip constraints: the set-up gets
# exactly these versions, while pyproject.toml keeps the ranges a library user may install:
#     {SETUP_LINE.format(torch=pins["torch"])}
# torch is pinned to the release of the CPU wheel this was made with (its +cpu label dropped).
# On a GPU, install your own torch first: the CUDA build of the same release satisfies the pin;
# for another release, leave the torch line out of the constraints.
#
# Refresh: set up as above, upgrade what you mean to, run the tests, then
#     python tools/lock.py -o requirements.lock
"""
    return header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write here (atomically), not stdout")
    args = parser.parse_args(argv)
    check_installed_project_is_current()
    text = render(closure())
    if args.output is None:
        sys.stdout.write(text)
        return 0
    fd, tmp = tempfile.mkstemp(dir=args.output.resolve().parent, prefix=".lock-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
