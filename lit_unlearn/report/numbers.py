"""How a number reads in a markdown table of the reports: one formatter for the quickstart report, its robustness
section and the attack reports, so the same value reads the same in each."""

import math


def fmt_number(value: float | None) -> str:
    """3 significant digits, scientific below 1e-3, "–" when missing or not finite.

    Example:
        >>> fmt_number(0.98), fmt_number(-4.79e-4), fmt_number(-0.0), fmt_number(None)
        ('0.98', '-4.79e-04', '0', '–')
    """
    if value is None or not math.isfinite(value):
        return "–"
    value += 0.0  # -0.0 (a zero change over a negative gap) prints as 0
    return f"{value:.3g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
