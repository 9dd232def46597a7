"""Reports of unlearning runs: readings of the G-effect against realised risk changes, figures, ``report.md``."""

from lit_unlearn.report.figures import FQ_THRESHOLD, plot_fq_mu, plot_g_effect_steps, plot_risk_changes
from lit_unlearn.report.markdown import HEADLINE, g_effect_summary, write_report
from lit_unlearn.report.readings import RiskReading, readings_of, risk_reading, verdict

__all__ = [
    "FQ_THRESHOLD",
    "HEADLINE",
    "RiskReading",
    "g_effect_summary",
    "plot_fq_mu",
    "plot_g_effect_steps",
    "plot_risk_changes",
    "readings_of",
    "risk_reading",
    "verdict",
    "write_report",
]
