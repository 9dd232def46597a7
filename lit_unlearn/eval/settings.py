"""``EvalSettings``: how a TOFU evaluation runs (shared by the Lightning mixin and the plain runner)."""

from dataclasses import dataclass


@dataclass
class EvalSettings:
    """Settings of a TOFU evaluation (generation, item cap, references, outputs).

    Args:
        max_new_tokens: Greedy-generation budget per answer (OpenUnlearning: 200 new tokens; original TOFU used 200
            tokens in total, prompt included).
        max_items: Evaluate only the first ``max_items`` rows of every split (original TOFU: 300, which caps forget10
            and retain_perturbed; OpenUnlearning: no cap). The evaluation loaders hold only those rows: the command
            line links this setting to the data module's ``eval_max_items``, the plain runner builds its loaders with
            it, and the evaluator raises on a row beyond it rather than dropping it.
        retain_eval_path: Per-item evaluation of the retain model on the same forget split (this project's
            ``eval_items.json``, a folder holding it, or an original TOFU ``eval_log_aggregated.json``): the reference
            of forget quality and privleak.
        output_dir: Where per-item JSON, summary JSON and the markdown table are written; defaults to the trainer's
            ``log_dir`` under Lightning and to no files in the plain runner.
        generate: Run greedy generation and ROUGE (disable for a fast teacher-forced-only evaluation).
        min_k: Fraction of lowest token log-probs in the min-k% membership score (OpenUnlearning: 0.4).
        privleak_reference_auc: Membership AUC of the retain model used by privleak when ``retain_eval_path`` has none
            (OpenUnlearning's default reference: 0.5).
        write_outputs: Write the output files (rank 0 only).
    """

    max_new_tokens: int = 200
    max_items: int | None = None
    retain_eval_path: str | None = None
    output_dir: str | None = None
    generate: bool = True
    min_k: float = 0.4
    privleak_reference_auc: float = 0.5
    write_outputs: bool = True

    def __post_init__(self) -> None:
        if self.retain_eval_path in ("None", "null"):
            # The command line's `--model.evaluation.retain_eval_path=null` reaches this nested dataclass as the
            # string (jsonargparse tries `str` first): it means "no reference", never a file named None.
            self.retain_eval_path = None
        if self.max_new_tokens < 1:
            raise ValueError(f"EvalSettings.max_new_tokens must be ≥ 1, got {self.max_new_tokens}.")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"EvalSettings.max_items must be ≥ 1 or None (no cap), got {self.max_items}.")
        if not 0.0 < self.min_k <= 1.0:
            raise ValueError(f"EvalSettings.min_k must be in (0, 1], got {self.min_k}.")
        if not 0.0 <= self.privleak_reference_auc < 1.0:
            raise ValueError(
                f"EvalSettings.privleak_reference_auc must be in [0, 1), got {self.privleak_reference_auc}."
            )
