"""lit-unlearn: LLM unlearning objectives, the G-effect and the TOFU benchmark on PyTorch Lightning."""

from lit_unlearn.data import TOFUFinetuneDataModule, TOFUUnlearnDataModule, load_tofu
from lit_unlearn.modules import (
    NPO,
    RMU,
    TNPO,
    WGA,
    WTNPO,
    Finetune,
    GradAscent,
    GradDiff,
    IdkDPO,
    IdkPO,
    SimNPO,
    UnlearningModule,
)

__all__ = [
    "NPO",
    "RMU",
    "TNPO",
    "WGA",
    "WTNPO",
    "Finetune",
    "GradAscent",
    "GradDiff",
    "IdkDPO",
    "IdkPO",
    "SimNPO",
    "TOFUFinetuneDataModule",
    "TOFUUnlearnDataModule",
    "UnlearningModule",
    "load_tofu",
]
