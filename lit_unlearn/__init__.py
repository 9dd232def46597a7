"""lit-unlearn: LLM unlearning objectives, the G-effect and the TOFU benchmark on PyTorch Lightning.

The public names resolve on first use (``lit_unlearn._lazy``): importing Lightning takes seconds, and commands such as
``lit-unlearn configs`` import ``lit_unlearn.*`` modules that never need it. ``from lit_unlearn import NPO`` and
``class_path: lit_unlearn.NPO`` work as with eager imports.
"""

from typing import TYPE_CHECKING

from lit_unlearn._lazy import lazy_exports

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

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lit_unlearn.data": ["TOFUFinetuneDataModule", "TOFUUnlearnDataModule", "load_tofu"],
        "lit_unlearn.modules": [
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
            "UnlearningModule",
        ],
    },
)
