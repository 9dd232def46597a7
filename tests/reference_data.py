"""Where the original TOFU logs (the parity tests' independent reference) are: ``tofu_reference/`` beside the TOFU
data folder (``$LIT_UNLEARN_TOFU_DIR/../tofu_reference``), else ``../shared/data/tofu_reference`` beside the
checkout. Both work from a clone anywhere, as long as the data folder is given."""

import os
from pathlib import Path

_DATA = os.environ.get("LIT_UNLEARN_TOFU_DIR")
_CANDIDATES = [Path(_DATA).resolve().parent / "tofu_reference"] if _DATA else []
_CANDIDATES.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu_reference")

TOFU_REFERENCE = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[-1])
"""The folder of the original TOFU evaluation logs (``phi-1.5/*_eval_log_aggregated.json``)."""
PHI_REFERENCE = TOFU_REFERENCE / "phi-1.5"
