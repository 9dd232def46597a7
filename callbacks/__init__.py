"""Lightning callbacks that depend only on torch and lightning (never on ``lit_unlearn``), so users can vendor them."""

from callbacks.g_effect import (
    GEffectCallback,
    GEffectInstanceRow,
    GEffectRow,
    SupportsPerExampleRisks,
    SupportsRiskLosses,
    load_history,
    load_instance_history,
)

__all__ = [
    "GEffectCallback",
    "GEffectInstanceRow",
    "GEffectRow",
    "SupportsPerExampleRisks",
    "SupportsRiskLosses",
    "load_history",
    "load_instance_history",
]
