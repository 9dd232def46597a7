"""Robustness attacks on unlearned models: does the forgotten knowledge come back?

* :mod:`lit_unlearn.attacks.relearn`: a few fine-tuning steps on half of the forget set (Hu et al. 2024), with a
  retain-data control and a retain-model baseline, evaluated on the other half;
* :mod:`lit_unlearn.attacks.quantize`: round-to-nearest 4/8-bit weight quantization (after Zhang et al., ICLR 2025)
  of the target and unlearned models, evaluated identically, with the fraction of integer codes unlearning changed.

Both return typed reports (dataclasses) and write a JSON report, a markdown table and the per-item evaluations;
``lit-unlearn attack relearn|quantize`` runs them from the command line. See docs/attacks.md.
"""

from lit_unlearn.attacks.common import AttackMetrics, EvalOptions, recovery_ratio
from lit_unlearn.attacks.quantize import (
    CodeChanges,
    LayerCodeChange,
    QuantizedModel,
    QuantizedWeight,
    QuantizeReport,
    QuantSpec,
    code_changes,
    fake_quantize_,
    quantization_attack,
    quantize_weight,
)
from lit_unlearn.attacks.relearn import (
    ArmPoint,
    ArmResult,
    AuthorHalves,
    BudgetState,
    ForgetHalves,
    RelearnReport,
    RelearnSettings,
    relearn_attack,
    relearn_finetune,
    retain_control_rows,
    split_forget_set,
)

__all__ = [
    "ArmPoint",
    "ArmResult",
    "AttackMetrics",
    "AuthorHalves",
    "BudgetState",
    "CodeChanges",
    "EvalOptions",
    "ForgetHalves",
    "LayerCodeChange",
    "QuantSpec",
    "QuantizeReport",
    "QuantizedModel",
    "QuantizedWeight",
    "RelearnReport",
    "RelearnSettings",
    "code_changes",
    "fake_quantize_",
    "quantization_attack",
    "quantize_weight",
    "recovery_ratio",
    "relearn_attack",
    "relearn_finetune",
    "retain_control_rows",
    "split_forget_set",
]
