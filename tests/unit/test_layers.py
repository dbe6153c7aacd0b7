"""Imports point one way: a package imports only from packages below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import llm_compression

ROOT = Path(llm_compression.__file__).parent
# Lowest first. A module may import from its own entry and from entries before it.
LAYERS = [
    "errors", "config", "weights", "weightfile", "core", "preprocess",
    "families", "onnxrt", "loader", "convert", "provider", "tables", "distributed", "validation", "align", "serve",
    "commands", "cli",
    "__main__", "__init__",
]  # fmt: skip
RUNTIME = ("weightfile", "core", "preprocess", "families", "onnxrt", "loader", "provider", "tables")


def _entry(module: Path) -> str:
    return module.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_entries(module: Path) -> set[str]:
    """Entries of llm_compression that ``module`` imports (relative or absolute)."""
    tree = ast.parse(module.read_text())
    depth = len(module.relative_to(ROOT).parts) - 1
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = depth - (node.level - 1)
                parts = list(module.relative_to(ROOT).parts[:up]) + (node.module or "").split(".")
                parts = [p for p in parts if p]
                names = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "llm_compression":
                rest = node.module.split(".")[1:]
                names = rest[:1] or [a.name for a in node.names]
            else:
                continue
            out.update(n for n in names if n in LAYERS)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "llm_compression" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for module in sorted(ROOT.rglob("*.py")):
        entry = _entry(module)
        rank = LAYERS.index(entry)
        for target in _imported_entries(module):
            if target != entry and LAYERS.index(target) > rank:
                wrong.append(f"{module.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports pointing up: " + "; ".join(wrong)


def test_runtime_packages_never_import_transformers():
    found = []
    for module in sorted(ROOT.rglob("*.py")):
        if _entry(module) not in RUNTIME:
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [
                f"{module.relative_to(ROOT)}: {n}"
                for n in names
                if n.split(".")[0] == "transformers"
            ]
    assert not found
