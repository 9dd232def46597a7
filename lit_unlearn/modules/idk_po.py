"""IdK preference optimisation (PO): teach refusals on forget questions."""

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ForgetTerm, ReferenceOutputs, RetainLoss, UnlearningModule


def idk_part(module: UnlearningModule, batch: Mapping[str, Batch]) -> Batch:
    """The refusal-answer part of ``batch``, with the fix spelled out when the data module did not produce it."""
    if "idk" not in batch:
        raise KeyError(
            f"{type(module).__name__} needs refusal answers for the forget questions: set "
            "`data.init_args.with_idk: true` on lit_unlearn.data.TOFUUnlearnDataModule."
        )
    return batch["idk"]


class IdkPO(UnlearningModule):
    """PO with "I don't know" answers (TOFU, Maini et al. 2024 §4): ``L = mean_tokens(ce(y_idk | x_forget))``.

    Fits a refusal, drawn at random from the refusal list shipped in ``lit_unlearn/data/idk_answers.txt``, to every
    forget question; it never pushes on the true answer directly.

    Per-example share (G-effect callback): a token mean over the refusal answers of the micro-batch, so forget example
    b's share of L_forget is ``(1/N_idk) Σ_{i ∈ refusal(b)} ce_i``, N_idk the refusal-answer tokens of the micro-batch
    (the ``"idk"`` rows are the forget rows in the same order).

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        retain_loss: Retain regulariser, ``"nll"`` by default (TOFU's "idk" = PO + GD). The G-effect paper's ``idk``
            has none (``"none"``).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(self, model_name_or_path: str, retain_loss: RetainLoss = "nll", **kwargs: Any) -> None:
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)

    @override
    def forget_term(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> ForgetTerm:
        return ForgetTerm(losses.nll(*self.answer_logps(idk_part(self, batch)), per_example=True))
