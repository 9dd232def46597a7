"""Package namespaces whose public names import their module on first use (PEP 562).

Importing Lightning takes seconds, and commands such as ``lit-unlearn configs`` or ``summarize`` import
``lit_unlearn`` modules that never need it: a package's ``__init__`` then names where each public name lives instead of
importing it. ``from lit_unlearn.data import load_tofu`` and ``class_path: lit_unlearn.data.TOFUUnlearnDataModule``
work as with eager imports.
"""

import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, origins: Mapping[str, Iterable[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` of ``package`` whose public names are ``origins`` (module → the
    names it defines); each name imports its module on first use and is then kept in the package's namespace."""
    where = {name: module for module, names in origins.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(where[name]), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
