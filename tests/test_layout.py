"""The layout (README.md, Layout): imports only go down, stages stay thin, no hidden wiring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.pipeline_helpers import REPO

# Lowest first: a module may import from its own layer and the layers before it.
LAYERS = [
    "models",
    "pipelines.core",
    "pipelines.data",
    "pipelines.inference",
    "pipelines.training",
    "pipelines.reports",
    "pipelines.study",
    "pipelines.tracking",
    "pipelines.ops",
    "pipelines.stages",
    "pipelines.commands",
    "pipelines.cli",
]


def layer_of(module: str) -> int | None:
    if module == "pipelines":  # the package's __init__: a docstring only
        return 0
    for index, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, lazy imports inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            # `from pipelines.tracking import registry` imports pipelines.tracking.registry
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


PRODUCT = sorted([*(REPO / "models").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")])


def test_layers_cover_every_product_module():
    assert PRODUCT
    assert [path for path in PRODUCT if layer_of(module_name(path)) is None] == []


@pytest.mark.parametrize("path", PRODUCT, ids=lambda path: module_name(path))
def test_imports_only_go_down(path):
    own = module_name(path)
    upward = []
    for line, imported in imported_modules(path):
        if not imported.startswith(("models", "pipelines", "benchmarks", "tests")):
            continue
        if imported.startswith(("benchmarks", "tests")):
            upward.append(f"{path.name}:{line}: {imported} (the product never imports it)")
            continue
        target = layer_of(imported)
        if target is not None and target > layer_of(own):
            upward.append(f"{path.name}:{line}: {imported} is above {own}")
        is_stage = imported.startswith("pipelines.stages.") and imported.count(".") == 2
        if is_stage and own.startswith("pipelines.stages.") and imported != own:
            upward.append(f"{path.name}:{line}: a stage imports another stage ({imported})")
    assert upward == []


def test_models_are_plain_pytorch():
    for path in (REPO / "models").rglob("*.py"):
        for line, imported in imported_modules(path):
            top = imported.split(".")[0]
            assert top not in ("lightning", "mlflow", "pipelines", "dvc"), f"{path}:{line}"


@pytest.mark.parametrize("path", sorted((REPO / "pipelines" / "stages").glob("[!_]*.py")))
def test_stage_functions_are_short(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def test_no_environment_variables_as_hidden_inputs():
    """Warm start, the retrain context and budgets are params or arguments, not NMT_* variables."""
    for path in PRODUCT:
        text = path.read_text(encoding="utf-8")
        assert "NMT_" not in text, path
