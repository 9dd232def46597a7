"""lit-unlearn: LLM unlearning objectives, the G-effect and the TOFU benchmark on PyTorch Lightning."""

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
