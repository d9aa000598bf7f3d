"""requirements.lock (README.md, Refreshing the lock): well-formed, torch 2.13.0, every direct
dependency in pyproject.toml pinned within its range, and the set-up line installs from it."""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^([a-z0-9]+(?:-[a-z0-9]+)*)==(\S+)$")


def lock_lines() -> list[str]:
    return [
        line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def pins() -> dict[str, str]:
    return dict(PIN.match(line).groups() for line in lock_lines())


def lock_tool():
    spec = importlib.util.spec_from_file_location("lock_tool", REPO / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_is_sorted_unique_exact_pins_of_canonical_names():
    lines = lock_lines()
    assert len(lines) > 50  # the whole closure, not just the direct dependencies
    bad = [line for line in lines if not PIN.match(line)]
    assert not bad, f"not `name==version` with a canonical name: {bad}"
    names = [PIN.match(line).group(1) for line in lines]
    assert names == sorted(set(names)), "names must be sorted and unique"
    for name, version in pins().items():
        assert str(Version(version)) == version and not Version(version).local, (name, version)


def test_lock_pins_the_cpu_torch_release():
    assert pins()["torch"] == "2.13.0"


def test_every_direct_dependency_is_pinned_within_pyproject_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = pins()
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{line} (pyproject.toml) is not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {name}=={locked[name]}, outside pyproject.toml's {line}"
        )


def test_set_up_line_installs_from_the_lock():
    setup = f'pip install torch=={pins()["torch"]} -c requirements.lock -e ".[dev]"'
    assert setup in (REPO / "README.md").read_text()
    assert setup.replace("pip install", "pip install -q") in (REPO / ".ci" / "run").read_text()
    header = LOCK.read_text().split("\n\n")[0]
    assert f"#     {setup}\n" in header
    assert "#     python tools/lock.py -o requirements.lock" in header


def test_lock_tool_pins_installed_versions_of_pytests_closure():
    tool = lock_tool()
    closure = tool.closure("pytest", ())
    assert "pytest" not in closure  # the root (nmt-pipeline itself) is installed from the checkout
    for req in tool.requirements_of("pytest", frozenset()):  # markers evaluated for here
        name = canonicalize_name(req.name)
        assert closure[name] == Version(metadata.version(name)).public


FAKE_REQUIRES = {
    "app": [
        "lib>=1",
        'devtool; extra == "dev"',
        'winonly; sys_platform == "win32"',
        "plugin[fast]",
    ],
    "lib": ["plugin[slow]"],
    "plugin": ['speedup; extra == "fast"', 'slowdep; extra == "slow"', 'never; extra == "x"'],
}
FAKE_VERSIONS = {"app": "0.1", "lib": "1.2", "devtool": "3", "plugin": "2.0+cpu", "speedup": "5"}
FAKE_VERSIONS["slowdep"] = "0.9"


def test_lock_tool_follows_extras_and_markers_and_drops_local_labels(monkeypatch):
    tool = lock_tool()

    def version(name):
        if name not in FAKE_VERSIONS:
            raise metadata.PackageNotFoundError(name)
        return FAKE_VERSIONS[name]

    monkeypatch.setattr(tool.metadata, "requires", lambda name: FAKE_REQUIRES.get(name, []))
    monkeypatch.setattr(tool.metadata, "version", version)
    expected = {"lib": "1.2", "plugin": "2.0", "speedup": "5", "slowdep": "0.9"}
    assert tool.closure("app", ()) == expected
    assert tool.closure("app", ("dev",)) == {**expected, "devtool": "3"}
    text = tool.render(tool.closure("app", ("dev",)) | {"torch": "2.13.0"})
    assert text.endswith(
        "devtool==3\nlib==1.2\nplugin==2.0\nslowdep==0.9\nspeedup==5\ntorch==2.13.0\n"
    )


def test_lock_tool_refuses_a_package_that_is_not_installed(monkeypatch):
    tool = lock_tool()
    monkeypatch.setattr(tool.metadata, "requires", lambda name: ["surely-not-installed-xyz>=1"])
    with pytest.raises(SystemExit, match="not installed: surely-not-installed-xyz"):
        tool.closure("pytest", ())
