"""lit-unlearn: LLM unlearning objectives, the G-effect and the TOFU benchmark on PyTorch Lightning.

The public names resolve on first use (PEP 562): importing Lightning takes seconds, and commands such as
``lit-unlearn configs`` import ``lit_unlearn.*`` modules that never need it. ``from lit_unlearn import NPO`` and
``class_path: lit_unlearn.NPO`` work as with eager imports.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_unlearn.data import TOFUFinetuneDataModule, TOFUUnlearnDataModule, load_tofu
    from lit_unlearn.modules import (
        CEU,
        NPO,
        PDU,
        RMU,
        TNPO,
        UNDIAL,
        WGA,
        WTNPO,
        Finetune,
        GradAscent,
        GradDiff,
        IdkDPO,
        IdkPO,
        SatImp,
        SimNPO,
        UnlearningModule,
    )

__all__ = [
    "CEU",
    "NPO",
    "PDU",
    "RMU",
    "TNPO",
    "UNDIAL",
    "WGA",
    "WTNPO",
    "Finetune",
    "GradAscent",
    "GradDiff",
    "IdkDPO",
    "IdkPO",
    "SatImp",
    "SimNPO",
    "TOFUFinetuneDataModule",
    "TOFUUnlearnDataModule",
    "UnlearningModule",
    "load_tofu",
]

_FROM_DATA = {"TOFUFinetuneDataModule", "TOFUUnlearnDataModule", "load_tofu"}
"""The public names of ``lit_unlearn.data``; the others are ``lit_unlearn.modules``'."""


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'lit_unlearn' has no attribute {name!r}")
    value = getattr(import_module("lit_unlearn.data" if name in _FROM_DATA else "lit_unlearn.modules"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
