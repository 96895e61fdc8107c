"""The layout shows the architecture: each layer imports only the layers below it (as each
package's docstring says), so there is no package cycle and only the command line sits above the
library and the analysis."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"wab": ROOT / "wab", "wab.methods": ROOT / "methods", "wab.analysis": ROOT / "analysis"}
BASE = {"wab", "wab.errors"}  # the version and config directory, the user-error type: anyone may import them
# the layer a module belongs to (its longest prefix here) -> the layers it may import
ALLOWED = {
    "wab.parts": {"wab.parts"},
    "wab.core": {"wab.core", "wab.parts"},
    "wab.method": {"wab.core", "wab.parts", "wab.methods"},  # the registry discovers the built-in methods by name
    "wab.methods": {"wab.methods", "wab.method", "wab.core", "wab.parts"},
    "wab.run": {"wab.run", "wab.method", "wab.core", "wab.parts"},
    "wab.launch": {"wab.launch", "wab.run", "wab.method", "wab.core", "wab.parts"},
    "wab.analysis": {"wab.analysis", "wab.run", "wab.method", "wab.core", "wab.parts"},
    "wab.cli": {"wab.demo", "wab.launch", "wab.run", "wab.method", "wab.core", "wab.parts", "wab.analysis"},
    "wab.demo": {"wab.launch", "wab.run", "wab.method", "wab.core", "wab.parts", "wab.analysis"},
}


def _layer(module: str) -> str:
    return max((layer for layer in (*ALLOWED, *BASE) if module == layer or module.startswith(layer + ".")), key=len)


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every wab module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "wab" or m.startswith("wab.")}


def test_each_layer_imports_only_the_layers_below_it():
    modules = _modules()
    assert {"wab.run.loop", "wab.core.population", "wab.launch.sweep", "wab.parts.data"} <= set(modules)
    bad = []
    for module, path in modules.items():
        layer = _layer(module)
        if layer in BASE:
            assert _imports(path) <= BASE, (module, _imports(path))
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target not in BASE and target not in ALLOWED[layer]:
                bad.append(f"{module} ({layer}) imports {imported} ({target})")
    assert bad == []


def test_every_package_says_what_it_owns_and_what_it_may_import():
    for package in ("parts", "core", "run", "launch"):
        doc = ast.get_docstring(ast.parse((ROOT / "wab" / package / "__init__.py").read_text())) or ""
        assert "import" in doc, package


def test_no_method_knows_where_members_live():
    """Methods see members through the population's calls only: no rank, world size or local index."""
    words = ("local_indices", ".rank", ".world", "population.comm", "pop.comm", "_local(")
    found = [f"{p.name}: {w}" for p in (ROOT / "methods").glob("*.py") for w in words if w in p.read_text()]
    assert found == []
