"""LightningModules: the unlearning objectives and plain fine-tuning."""

from lit_unlearn.modules.base import UnlearningModule
from lit_unlearn.modules.ceu import CEU
from lit_unlearn.modules.finetune import Finetune
from lit_unlearn.modules.grad_ascent import GradAscent
from lit_unlearn.modules.grad_diff import GradDiff
from lit_unlearn.modules.idk_dpo import IdkDPO
from lit_unlearn.modules.idk_po import IdkPO
from lit_unlearn.modules.npo import NPO
from lit_unlearn.modules.pdu import PDU
from lit_unlearn.modules.rmu import RMU
from lit_unlearn.modules.satimp import SatImp
from lit_unlearn.modules.simnpo import SimNPO
from lit_unlearn.modules.tnpo import TNPO
from lit_unlearn.modules.undial import UNDIAL
from lit_unlearn.modules.wga import WGA
from lit_unlearn.modules.wtnpo import WTNPO

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
    "UnlearningModule",
]
