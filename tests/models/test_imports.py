"""``lit_unlearn.models`` loads and builds models only: it never imports the data, evaluation or module packages."""

import ast
from pathlib import Path

import lit_unlearn.models

PACKAGE = Path(lit_unlearn.models.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, at top level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                names.add("lit_unlearn.models" + (f".{node.module}" if node.module else ""))
            else:
                names.add(node.module)
    return names


def test_models_import_nothing_else_of_the_package() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "hub.py", "tiny.py"}
    for path in files:
        ours = {name for name in _imported_modules(path) if name.split(".")[0] == "lit_unlearn"}
        outside = {name for name in ours if not name.startswith("lit_unlearn.models")}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def corpus():\n    from lit_unlearn.data import load_tofu\n    return load_tofu\n")
    assert "lit_unlearn.data" in _imported_modules(source)
