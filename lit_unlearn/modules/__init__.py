"""LightningModules: the unlearning objectives and plain fine-tuning."""

from lit_unlearn.modules.base import UnlearningModule
from lit_unlearn.modules.finetune import Finetune
from lit_unlearn.modules.grad_ascent import GradAscent
from lit_unlearn.modules.grad_diff import GradDiff
from lit_unlearn.modules.idk_dpo import IdkDPO
from lit_unlearn.modules.idk_po import IdkPO
from lit_unlearn.modules.npo import NPO
from lit_unlearn.modules.rmu import RMU
from lit_unlearn.modules.simnpo import SimNPO
from lit_unlearn.modules.tnpo import TNPO
from lit_unlearn.modules.wga import WGA
from lit_unlearn.modules.wtnpo import WTNPO

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
    "UnlearningModule",
]
