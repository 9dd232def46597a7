"""``Finetune``: the SFT loss against Hugging Face's own, training, saving, LoRA and the tiny recipe.

The shipped fine-tuning configs are covered through the real CLI by ``tests/test_configs.py`` (parsing) and
``tests/modules/test_schedule.py`` (their optimiser, schedule and training rows).
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from transformers import AutoModelForCausalLM

from lit_unlearn.data import IGNORE_INDEX, TOFUFinetuneDataModule, encode_pair, load_tofu, pad_sequences
from lit_unlearn.models import LoraSettings, load_tokenizer
from lit_unlearn.models.tiny import TinyLlamaSpec, tiny_model_is_built
from lit_unlearn.modules.finetune import Finetune, tiny_tokenizer_corpus

REPO = Path(__file__).resolve().parents[2]


def _datamodule(model_dir: Path, batch_size: int = 4, eval_batch_size: int = 32) -> TOFUFinetuneDataModule:
    return TOFUFinetuneDataModule(
        tokenizer_name_or_path=str(model_dir),
        num_authors=1,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        prompt_format="qa",
    )


def _batch(model_dir: Path, tofu_dir: Path, n: int = 3) -> dict[str, torch.Tensor]:
    return _batch_rows(model_dir, load_tofu("full", tofu_dir)[:n])


def _batch_rows(model_dir: Path, rows: list[dict]) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(str(model_dir))
    pairs = [encode_pair(tokenizer, r["question"], r["answer"], "qa") for r in rows]
    return pad_sequences(
        [p["input_ids"] for p in pairs], tokenizer.pad_token_id, "right", labels=[p["labels"] for p in pairs]
    )


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "limit_val_batches": 0,
    }
    return Trainer(**{**defaults, **kwargs})


def test_loss_and_accuracy_match_references(tiny_model_dir: Path, tofu_dir: Path) -> None:
    module = Finetune(str(tiny_model_dir))
    batch = _batch(tiny_model_dir, tofu_dir)
    loss, accuracy = module.answer_nll(batch)
    # Hugging Face shifts labels itself and averages over every non -100 label of the batch.
    reference = module.model(**batch).loss
    torch.testing.assert_close(loss, reference)
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    hits, total = _hand_accuracy(logits, batch["labels"])
    assert accuracy.item() == pytest.approx(hits / total)
    risks = module.risk_losses([batch, batch])
    assert set(risks) == {"train"}
    torch.testing.assert_close(risks["train"], reference)


@pytest.mark.parametrize("rows_per_forward", [1, 2, 5])
def test_chunked_forward_has_the_whole_batch_loss_and_gradient(
    tiny_model_dir: Path, tofu_dir: Path, rows_per_forward: int
) -> None:
    """Length-sorted chunks, each cut to its own longest row, give the batch's token-mean loss, accuracy and
    gradient (Hugging Face's ``outputs.loss`` on the padded batch is the reference)."""
    rows = load_tofu("full", tofu_dir)[:3] + load_tofu("world_facts_perturbed", tofu_dir)[:2]  # long and short
    batch = _batch_rows(tiny_model_dir, rows)
    whole, chunked = Finetune(str(tiny_model_dir)), Finetune(str(tiny_model_dir), rows_per_forward=rows_per_forward)
    reference = whole.model(**batch).loss
    reference.backward()
    loss, accuracy = chunked.answer_nll(batch)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    logits = whole.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    hits, total = _hand_accuracy(logits, batch["labels"])
    assert accuracy.item() == pytest.approx(hits / total)
    for (name, a), b in zip(whole.model.named_parameters(), chunked.model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_forward_refuses_left_padding(tiny_model_dir: Path, tofu_dir: Path) -> None:
    batch = _batch(tiny_model_dir, tofu_dir)
    left = {k: torch.flip(v, dims=[1]) for k, v in batch.items()}  # padding now comes first
    with pytest.raises(ValueError, match="right-padded"):
        Finetune(str(tiny_model_dir), rows_per_forward=1).answer_nll(left)


def test_training_lowers_the_loss_and_saves_a_loadable_model(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "finetuned"
    module = Finetune(str(tiny_model_dir), lr=1.0e-2, warmup_epochs=0.0, output_dir=str(out))
    batch = _batch(tiny_model_dir, tofu_dir, n=4)
    with torch.no_grad():
        before = module.answer_nll(batch)[0].item()
    _trainer(tmp_path, max_steps=10).fit(module, datamodule=_datamodule(tiny_model_dir))
    module.eval()
    with torch.no_grad():
        after = module.answer_nll(batch)[0].item()
    assert after < before - 0.5
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, module.model.state_dict()[name])
    assert load_tokenizer(str(out)).get_vocab() == module.tokenizer.get_vocab()


def test_lora_trains_only_adapters_and_saves_merged_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    module = Finetune(
        str(tiny_model_dir),
        lr=1.0e-2,
        lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        output_dir=str(out),
    )
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _trainer(tmp_path, max_steps=3).fit(module, datamodule=_datamodule(tiny_model_dir))
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param, initial[name])
        # lora_B starts at zero and lora_A gets no gradient until B moves, so only B is certain to move at step 1.
        if "lora_B" in name:
            assert changed, name
        if "lora_" not in name:
            assert not changed, name
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q_proj], base[q_proj])  # the adapters are merged in
    assert torch.equal(
        merged.state_dict()["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"]
    )


def _hand_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Teacher-forced hits and answer tokens, one position at a time: the logits at t - 1 predict the label at t."""
    hits = total = 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            label = labels[b, t].item()
            if label != IGNORE_INDEX:
                total += 1
                hits += int(logits[b, t - 1].argmax().item() == label)
    return hits, total


def test_validation_logs_memorisation_metrics(tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path) -> None:
    module = Finetune(str(tiny_model_dir))
    datamodule = _datamodule(tiny_model_dir, eval_batch_size=8)  # the 20 rows of author 0 in batches of 8, 8, 4
    metrics = _trainer(tmp_path, limit_val_batches=None).validate(module, datamodule=datamodule, verbose=False)[0]
    rows = load_tofu("full", tofu_dir)[:20]
    # Reference: each row alone through Hugging Face's own loss (mean NLL of its answer tokens).
    item_nll = [module.model(**_batch_rows(tiny_model_dir, [row])).loss.item() for row in rows]
    assert metrics["val/answer_probability"] == pytest.approx(sum(math.exp(-x) for x in item_nll) / 20, rel=1e-4)
    # Reference: each batch's token accuracy counted by hand, then the epoch mean weighted by batch size.
    weighted = 0.0
    with torch.no_grad():
        for start in range(0, 20, 8):
            batch = _batch_rows(tiny_model_dir, rows[start : start + 8])
            logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            hits, total = _hand_accuracy(logits, batch["labels"])
            weighted += hits / total * batch["input_ids"].shape[0]
    assert metrics["val/answer_accuracy"] == pytest.approx(weighted / 20, rel=1e-6)


def test_tiny_spec_builds_the_model_the_datamodule_reads(tmp_path: Path, tofu_dir: Path) -> None:
    spec = TinyLlamaSpec(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    path = tmp_path / "init"
    module = Finetune(str(path), tiny=spec, tiny_data_dir=str(tofu_dir))
    assert module.model.config.hidden_size == 32
    # Built from the tiny recipe's TOFU text (tests/models/test_tiny.py pins what that text builds).
    assert tiny_model_is_built(path, tiny_tokenizer_corpus(tofu_dir), spec)
    assert not tiny_model_is_built(path, tiny_tokenizer_corpus(tofu_dir)[1:], spec)
    datamodule = _datamodule(path)
    datamodule.setup("fit")
    assert datamodule.tokenizer.get_vocab() == module.tokenizer.get_vocab()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be positive"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers in"),
        ({"warmup_epochs": -1.0}, "warmup_epochs must be"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio must be in"),
        ({"decay": "step"}, "decay='step'"),
    ],
)
def test_bad_arguments(tiny_model_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Finetune(str(tiny_model_dir), **kwargs)


def _answer_metrics(model_dir: Path, rows: list[dict]) -> tuple[float, float]:
    """Teacher-forced answer accuracy and exp(-mean answer NLL), computed from scratch (independent of Finetune)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(str(model_dir))
    hits = total = 0
    nll = 0.0
    with torch.no_grad():
        for row in rows:
            pair = encode_pair(tokenizer, row["question"], row["answer"], "qa")
            ids = torch.tensor([pair["input_ids"]])
            labels = torch.tensor(pair["labels"][1:])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            keep = labels != IGNORE_INDEX
            nll -= logps[keep].gather(1, labels[keep, None]).sum().item()
            hits += (logps[keep].argmax(-1) == labels[keep]).sum().item()
            total += int(keep.sum())
    return hits / total, math.exp(-nll / total)


@pytest.mark.slow
def test_tiny_target_recipe_memorises_its_authors(tmp_path: Path, tofu_dir: Path) -> None:
    from lit_unlearn.cli import main

    out = tmp_path / "target"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "tofu_tiny" / "finetune_target.yaml"),
            f"--model.init_args.model_name_or_path={tmp_path / 'init'}",
            f"--model.init_args.output_dir={out}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    full = load_tofu("full", tofu_dir)
    # The authors the recipe names (20 rows each in full.json) and the forget01 authors (the last 40 rows). The recipe
    # once took the first 20 authors: checked against those, the authors it no longer trains on scored 0.39.
    config = yaml.safe_load((REPO / "configs" / "tofu_tiny" / "finetune_target.yaml").read_text())
    authors = config["data"]["init_args"]["authors"]
    rows = [row for a in authors for row in full[20 * a : 20 * (a + 1)]] + full[-40:]
    assert len(rows) == 20 * len(authors) + 40
    accuracy, probability = _answer_metrics(out, rows)
    assert accuracy >= 0.9
    assert probability >= 0.5
