"""The packages stand in layers: kiln_api on nothing of Kiln's, trainer and operator on kiln_api
only (never on each other), the command line on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {
    "kiln_api": ROOT / "api" / "kiln_api",
    "kiln_trainer": ROOT / "trainer_image" / "kiln_trainer",
    "kiln_operator": ROOT / "operator" / "kiln_operator",
    "kiln_cli": ROOT / "cli" / "kiln_cli",
}
MAY_IMPORT = {
    "kiln_api": set(),
    "kiln_trainer": {"kiln_api"},
    "kiln_operator": {"kiln_api"},
    "kiln_cli": {"kiln_api", "kiln_trainer", "kiln_operator"},
}


def kiln_imports(package_dir: Path) -> dict[str, set[str]]:
    """Every top-level Kiln package each module imports, lazily (inside functions) or not."""
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = {n for n in names if n in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_imports_only_the_layers_below_it(package):
    allowed = MAY_IMPORT[package] | {package}
    offending = {module: sorted(names - allowed) for module, names in kiln_imports(PACKAGES[package]).items()
                 if names - allowed}
    assert offending == {}


def test_operator_directory_is_not_a_package():
    # A package named `operator` would shadow Python's standard library.
    assert not (ROOT / "operator" / "__init__.py").exists()
