"""The package's import graph: layers point one way and nothing imports back up, not even inside a function.

Every ``import``/``from ... import`` statement of every module is read from the source (top level and inside
functions alike), resolved to the ``lit_unlearn`` module it loads, and checked.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_unlearn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, source: str, is_package: bool) -> Iterator[str]:
    """The lit_unlearn modules that module ``name`` imports: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        yield from (t for t in targets if t == "lit_unlearn" or t.startswith("lit_unlearn."))


GRAPH = {
    name: set(_imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")) - {name}
    for name, path in MODULES.items()
}


def _edges_from(prefix: str) -> list[tuple[str, str]]:
    return [(m, t) for m, targets in GRAPH.items() if m.startswith(prefix) for t in sorted(targets)]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("lit_unlearn.data", "lit_unlearn.eval"),  # evaluation builds on data, never the reverse
        ("lit_unlearn.models", "lit_unlearn.data"),  # loading a model needs no dataset
        ("lit_unlearn.metrics", "lit_unlearn.eval"),  # metrics take numbers and strings, not evaluation runs
        ("lit_unlearn.losses", "lit_unlearn.modules"),
    ],
)
def test_layer_never_imports_upward(importer: str, forbidden: str) -> None:
    bad = [(m, t) for m, t in _edges_from(importer) if t == forbidden or t.startswith(f"{forbidden}.")]
    assert not bad, f"{importer} must not import {forbidden}: {bad}"


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components: any component with more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_checker_sees_function_level_and_relative_imports() -> None:
    """The checker itself: imports inside functions and relative imports are edges like any other."""
    source = (
        "import os\n"
        "from . import losses\n"
        "def f():\n"
        "    from lit_unlearn.eval import runner\n"
        "    import lit_unlearn.data\n"
    )
    found = set(_imports("lit_unlearn.modules.base", source, is_package=False))
    # `from . import losses` in lit_unlearn/modules/base.py names no module lit_unlearn.modules.losses: the package.
    assert found == {"lit_unlearn.modules", "lit_unlearn.eval.runner", "lit_unlearn.data"}


@pytest.mark.parametrize("package", ["lit_unlearn", "lit_unlearn.data", "lit_unlearn.eval"])
def test_a_lazy_package_shows_type_checkers_every_public_name(package: str) -> None:
    """The TYPE_CHECKING imports of a lazy package (what type checkers and IDEs see) name exactly its ``__all__``
    (what resolves at run time): a name added to one list only would drift apart unnoticed."""
    from importlib import import_module

    tree = ast.parse(MODULES[package].read_text(encoding="utf-8"))
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    seen = {
        alias.asname or alias.name for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    eager = {"summarize"} if package == "lit_unlearn.eval" else set()  # imported outside the block: see its comment
    assert seen | eager == set(import_module(package).__all__)
