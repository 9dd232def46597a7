"""Lightning callbacks that depend only on torch and lightning (never on ``lit_unlearn``), so users can vendor them."""

from callbacks.g_effect import (
    GEffectCallback,
    SupportsPerExampleRisks,
    SupportsRiskLosses,
    load_history,
)

__all__ = ["GEffectCallback", "SupportsPerExampleRisks", "SupportsRiskLosses", "load_history"]
