"""The package's import layers, read from the source with `ast` (nothing is imported).

models (artv_jax/models) is the bottom layer: it imports only itself and the
leaf modules in `LEAVES`; diffusion may import models; data imports neither
models nor diffusion. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "artv_jax"

# Top-level modules that import nothing from artv_jax, so any layer may use them.
LEAVES = ("artv_jax.weights",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _artv_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `path` (or `source` read as that file) imports from artv_jax.

    `from m import x` gives `m.x`; relative imports are made absolute.
    """
    source = path.read_text() if source is None else source
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..diffusion import masked` inside artv_jax/models
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "artv_jax" or name.startswith("artv_jax.")]


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(layer: str, allowed=None, forbidden=()) -> list[str]:
    """Imports of the modules under artv_jax/<layer> that are outside `allowed` (if given) or inside `forbidden`."""
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"no modules found under {PACKAGE / layer}"
    out = []
    for path in files:
        for line, name in _artv_imports(path):
            if (allowed is not None and not _within(name, allowed)) or _within(name, forbidden):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return out


def test_every_module_parses():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        _artv_imports(path)  # a SyntaxError names the file


def test_models_import_only_models():
    bad = _violations("models", allowed=("artv_jax.models", *LEAVES))
    assert not bad, ("artv_jax/models is the bottom layer: it may import only artv_jax.models and "
                     f"{', '.join(LEAVES)}, not diffusion, data or other top-level modules:\n  " + "\n  ".join(bad))


def test_data_imports_neither_models_nor_diffusion():
    bad = _violations("data", forbidden=("artv_jax.models", "artv_jax.diffusion"))
    assert not bad, "artv_jax/data must not import artv_jax.models or artv_jax.diffusion:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_from_the_package(leaf):
    path = PACKAGE.parent / (leaf.replace(".", "/") + ".py")
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}" for line, name in _artv_imports(path)]
    assert not bad, f"{leaf} is imported by artv_jax/models, so it must import nothing from artv_jax:\n  " + \
        "\n  ".join(bad)


def test_relative_imports_are_resolved():
    """The checker itself: relative imports are seen under their absolute names."""
    source = "from ..diffusion import masked\nfrom . import layers\nfrom .layers import conv\nimport numpy\n"
    names = [name for _, name in _artv_imports(PACKAGE / "models" / "adapter.py", source)]
    assert names == ["artv_jax.diffusion.masked", "artv_jax.models.layers", "artv_jax.models.layers.conv"]
