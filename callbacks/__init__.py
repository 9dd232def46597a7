"""Lightning callbacks that depend only on torch and lightning (never on ``lit_unlearn``), so users can vendor them."""

from callbacks.g_effect import (
    GEffectCallback,
    GEffectInstanceRow,
    GEffectRankingRow,
    GEffectRow,
    SupportsExampleIds,
    SupportsLossTerms,
    SupportsObjectiveTerms,
    SupportsPerExampleObjective,
    SupportsPerExampleRisks,
    SupportsRiskLosses,
    SupportsSkipUnlearnBackward,
    SupportsStepRisks,
    load_history,
    load_instance_history,
    load_ranking,
    rank_instances,
)

__all__ = [
    "GEffectCallback",
    "GEffectInstanceRow",
    "GEffectRankingRow",
    "GEffectRow",
    "SupportsExampleIds",
    "SupportsLossTerms",
    "SupportsObjectiveTerms",
    "SupportsPerExampleObjective",
    "SupportsPerExampleRisks",
    "SupportsRiskLosses",
    "SupportsSkipUnlearnBackward",
    "SupportsStepRisks",
    "load_history",
    "load_instance_history",
    "load_ranking",
    "rank_instances",
]
