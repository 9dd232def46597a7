"""IdK preference optimisation (PO): teach refusals on forget questions."""

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from typing_extensions import override

from lit_unlearn import losses
from lit_unlearn.batch import Batch
from lit_unlearn.modules.base import ReferenceOutputs, RetainLoss, UnlearningModule


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

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        retain_loss: Retain regulariser, ``"nll"`` by default (TOFU's "idk" = PO + GD).
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(self, model_name_or_path: str, retain_loss: RetainLoss = "nll", **kwargs: Any) -> None:
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)

    @override
    def forget_loss(self, batch: Mapping[str, Batch], reference: ReferenceOutputs) -> Tensor:
        return losses.nll(*self.answer_logps(idk_part(self, batch)))
