"""Gradient difference (GD): gradient ascent on the forget set, descent on the retain set."""

from typing import Any

from lit_unlearn.modules.base import RetainLoss
from lit_unlearn.modules.grad_ascent import GradAscent


class GradDiff(GradAscent):
    """Gradient difference (Liu et al. 2022; TOFU): ``L = −mean_tokens(ce_forget) + α · mean_tokens(ce_retain)``.

    Gradient ascent with the retain NLL term on by default (``retain_loss="kl"`` gives GA+KL). The G-effect paper's
    ``gd`` with its default λ = 1 (``retain_weight``); GA is the only objective its code pairs with GD. The unlearn
    term and its per-example shares are :class:`~lit_unlearn.modules.GradAscent`'s.

    Args:
        model_name_or_path: Hub id or local directory of the model to unlearn.
        retain_loss: Retain regulariser, ``"nll"`` by default.
        **kwargs: Further :class:`~lit_unlearn.modules.base.UnlearningModule` arguments.
    """

    def __init__(self, model_name_or_path: str, retain_loss: RetainLoss = "nll", **kwargs: Any) -> None:
        super().__init__(model_name_or_path=model_name_or_path, retain_loss=retain_loss, **kwargs)
