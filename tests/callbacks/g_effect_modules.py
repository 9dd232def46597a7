"""Tiny user LightningModules for the GEffectCallback tests: plain Lightning code, nothing from lit_unlearn.

They live in an importable module (not inside a test function) so ``ddp_spawn`` can pickle them. Both unlearners
implement every protocol of the callback exactly, for an objective ``γ·L_forget + α·L_retain`` whose terms are
averaged per micro-batch and then over the micro-batches (as Lightning averages accumulated gradients):

* :class:`MLPUnlearner`: ``L_forget = −mean_i mse_i`` over the forget examples of a micro-batch, so forget example
  ``i``'s share of the unlearn term is ``−γ·mse_i / (B_j·k)`` (``B_j`` examples in its micro-batch, ``k``
  micro-batches);
* :class:`LlamaUnlearner`: ``L_forget = −Σ_tokens ce / N_j``, a TOKEN mean over the ``N_j`` answer tokens of the whole
  micro-batch (GradDiff's forget term), so example ``i``'s share is ``−γ·Σ_{t ∈ answer(i)} ce_t / (N_j·k)``. That is
  not ``−γ·mean_{t ∈ answer(i)} ce_t / (B_j·k)`` (a mean of per-example means): the examples' answers have different
  lengths, and the tests check which one the callback's values match.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset


class PairDataset(Dataset):
    """``n`` rows of (forget x, forget y, retain x, retain y) regression pairs, fixed by ``seed``."""

    def __init__(self, n: int = 16, dim: int = 4, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.fx = torch.randn(n, dim, generator=gen)
        self.fy = torch.randn(n, generator=gen)
        self.rx = torch.randn(n, dim, generator=gen)
        self.ry = torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.fx)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"fx": self.fx[i], "fy": self.fy[i], "rx": self.rx[i], "ry": self.ry[i], "index": torch.tensor(i)}


class MLPUnlearner(LightningModule):
    """Gradient difference on an MLP: minimise −γ·MSE(forget) + α·MSE(retain); risks are the two MSEs.

    With ``retain_weight=0`` the objective has no regulariser and ``objective_terms`` returns only ``"unlearn"``.
    """

    def __init__(
        self,
        lr: float = 1e-2,
        optimizer: str = "sgd",
        dropout: float = 0.0,
        batch_size: int = 4,
        n: int = 16,
        hidden: int = 16,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.lr = lr
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.n = n
        self.forget_weight = forget_weight
        self.retain_weight = retain_weight
        # SupportsLossTerms: while a dict, training_step records the terms of the loss it returns.
        self._loss_terms: dict[str, Tensor] | None = None
        # SupportsSkipUnlearnBackward: the callback has put the unlearn term's gradient in .grad.
        self._skip_unlearn = False

    def per_example(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.net(x).squeeze(-1) - y) ** 2

    def terms(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The objective's terms on one micro-batch."""
        terms = {"unlearn": -self.forget_weight * self.per_example(batch["fx"], batch["fy"]).mean()}
        if self.retain_weight:
            terms["regularizer"] = self.retain_weight * self.per_example(batch["rx"], batch["ry"]).mean()
        return terms

    def objective(self, batch: Mapping[str, Tensor]) -> Tensor:
        return sum(self.terms(batch).values())

    def objective_terms(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        per_batch = [self.terms(b) for b in batches]
        return {name: sum(t[name] for t in per_batch) / len(batches) for name in per_batch[0]}

    def per_example_unlearn(self, batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
        # A mean over the B_j examples of micro-batch j, then over the k micro-batches.
        k = len(batches)
        return torch.cat(
            [-self.forget_weight * self.per_example(b["fx"], b["fy"]) / (len(b["fx"]) * k) for b in batches]
        )

    def example_ids(self, batches: Sequence[Mapping[str, Tensor]]) -> list[dict[str, int]]:
        return [{"index": int(i)} for b in batches for i in b["index"]]

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.terms(batch)
        if self._loss_terms is not None:
            self._loss_terms = terms
        return sum(terms.values())

    def keep_loss_terms(self, keep: bool) -> None:
        self._loss_terms = {} if keep else None

    def loss_terms(self) -> dict[str, Tensor]:
        return dict(self._loss_terms or {})

    def skip_unlearn_backward(self) -> None:
        self._skip_unlearn = True

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self._skip_unlearn:
            self._skip_unlearn = False
            regularizer = (self._loss_terms or {}).get("regularizer")
            if regularizer is None:
                return
            loss = regularizer / self.trainer.accumulate_grad_batches
        super().backward(loss, *args, **kwargs)

    def risk_losses(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        per = self.per_example_risks(batches)
        return {name: values.mean() for name, values in per.items()}

    def per_example_risks(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        cat = {k: torch.cat([b[k] for b in batches]) for k in ("fx", "fy", "rx", "ry")}
        return {"forget": self.per_example(cat["fx"], cat["fy"]), "retain": self.per_example(cat["rx"], cat["ry"])}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.optimizer not in ("adamw", "adamw_fused"):
            raise ValueError(f"optimizer must be 'sgd', 'adamw' or 'adamw_fused', got {self.optimizer!r}")
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0, fused=self.optimizer == "adamw_fused")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PairDataset(self.n), batch_size=self.batch_size, shuffle=False)


class GradMinusUnlearnMLP(MLPUnlearner):
    """The MLP with :class:`~callbacks.SupportsLossTerms` but without :class:`~callbacks.SupportsSkipUnlearnBackward`:
    its backward differentiates the whole loss, and the regulariser's gradient is ``.grad`` minus the unlearn term's."""

    skip_unlearn_backward = None  # type: ignore[assignment]


class ObjectiveTermsMLP(MLPUnlearner):
    """The MLP without :class:`~callbacks.SupportsLossTerms`: ``terms=True`` runs ``objective_terms`` instead."""

    # A protocol method set to None counts as not implemented (typing's runtime protocol check).
    keep_loss_terms = None  # type: ignore[assignment]


class ReentrantCheckpointMLP(MLPUnlearner):
    """The MLP with its output layer under reentrant ``torch.utils.checkpoint`` (set up by hand, not through HF)."""

    def per_example(self, x: Tensor, y: Tensor) -> Tensor:
        hidden = self.net[2](self.net[1](self.net[0](x)))
        out = checkpoint(self.net[3], hidden, use_reentrant=True)
        return (out.squeeze(-1) - y) ** 2


class IdlessMLP(MLPUnlearner):
    """The unlearner without example ids (``None`` opts out of the ``SupportsExampleIds`` protocol)."""

    example_ids = None


class NoRiskMLP(LightningModule):
    """A module that does not implement the protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return self.net(batch["fx"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PairDataset(8), batch_size=4)


class ManualMLPUnlearner(MLPUnlearner):
    """The same objective with manual optimisation (two backward passes, one step)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(-self.per_example(batch["fx"], batch["fy"]).mean())
        self.manual_backward(self.per_example(batch["rx"], batch["ry"]).mean())
        opt.step()


def tiny_llama(seed: int = 0, vocab: int = 64, layers: int = 2) -> nn.Module:
    """A random LlamaForCausalLM small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


class TokenDataset(Dataset):
    """Random token sequences with the first ``prompt`` positions masked as prompt (-100) and ragged padding."""

    def __init__(self, n: int = 8, length: int = 12, vocab: int = 64, prompt: int = 3, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (2, n, length), generator=gen)
        self.labels = self.ids.clone()
        self.labels[:, :, :prompt] = -100
        # Different answer lengths per example make token mean and per-example mean differ.
        for j in range(n):
            self.labels[:, j, length - (j % 4) :] = -100

    def __len__(self) -> int:
        return self.ids.shape[1]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "f_ids": self.ids[0, i],
            "f_labels": self.labels[0, i],
            "r_ids": self.ids[1, i],
            "r_labels": self.labels[1, i],
            "index": torch.tensor(i),
        }


class LlamaUnlearner(LightningModule):
    """A plain user module wrapping a HF Llama: gradient difference γ·(−NLL_f) + α·NLL_r on token-mean answer NLLs."""

    def __init__(
        self,
        lr: float = 1e-3,
        batch_size: int = 4,
        n: int = 8,
        attn: str = "sdpa",
        layers: int = 2,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = tiny_llama(layers=layers)
        self.model.config._attn_implementation = attn
        self.lr = lr
        self.batch_size = batch_size
        self.n = n
        self.forget_weight = forget_weight
        self.retain_weight = retain_weight

    def token_nll(self, ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
        target = labels[:, 1:]
        mask = target != -100
        nll = F.cross_entropy(logits.float().transpose(1, 2), target.clamp(min=0), reduction="none")  # (B, T-1)
        return nll * mask, mask

    def nll(self, ids: Tensor, labels: Tensor) -> Tensor:
        nll, mask = self.token_nll(ids, labels)
        return nll.sum() / mask.sum()

    def terms(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The objective's terms on one micro-batch: token means over the micro-batch's answer tokens."""
        return {
            "unlearn": -self.forget_weight * self.nll(batch["f_ids"], batch["f_labels"]),
            "regularizer": self.retain_weight * self.nll(batch["r_ids"], batch["r_labels"]),
        }

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.terms(batch)
        return terms["unlearn"] + terms["regularizer"]

    def objective_terms(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        per_batch = [self.terms(b) for b in batches]
        return {name: sum(t[name] for t in per_batch) / len(batches) for name in ("unlearn", "regularizer")}

    def per_example_unlearn(self, batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
        # Token mean over micro-batch j: example i's share is its summed token NLL over N_j, the micro-batch's count.
        shares = []
        for b in batches:
            nll, mask = self.token_nll(b["f_ids"], b["f_labels"])
            shares.append(-self.forget_weight * nll.sum(-1) / (mask.sum() * len(batches)))
        return torch.cat(shares)

    def example_ids(self, batches: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Any]]:
        return [{"index": i, "question": f"question {int(i)}"} for b in batches for i in b["index"]]

    def _cat(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    def risk_losses(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        cat = self._cat(batches)
        return {"forget": self.nll(cat["f_ids"], cat["f_labels"]), "retain": self.nll(cat["r_ids"], cat["r_labels"])}

    def per_example_risks(self, batches: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        cat = self._cat(batches)
        out = {}
        for name, prefix in (("forget", "f"), ("retain", "r")):
            nll, mask = self.token_nll(cat[f"{prefix}_ids"], cat[f"{prefix}_labels"])
            out[name] = nll.sum(-1) / mask.sum(-1)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TokenDataset(self.n), batch_size=self.batch_size, shuffle=False)
