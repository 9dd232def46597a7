"""``Finetune``: the SFT loss against Hugging Face's own, training, saving, LoRA, configs and the tiny recipe."""

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from transformers import AutoModelForCausalLM

from lit_unlearn.data import IGNORE_INDEX, TOFUFinetuneDataModule, encode_pair, load_tofu, pad_sequences
from lit_unlearn.models import LoraSettings, load_tokenizer
from lit_unlearn.models.tiny import TinyLlamaSpec
from lit_unlearn.modules.finetune import Finetune, _warmup_cosine

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("tofu*/finetune_*.yaml"))


def _datamodule(model_dir: Path, batch_size: int = 4) -> TOFUFinetuneDataModule:
    return TOFUFinetuneDataModule(
        tokenizer_name_or_path=str(model_dir), num_authors=1, batch_size=batch_size, prompt_format="qa"
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
    hits = total = 0
    for b in range(batch["input_ids"].shape[0]):
        for t in range(1, batch["input_ids"].shape[1]):
            label = batch["labels"][b, t].item()
            if label != IGNORE_INDEX:
                total += 1
                hits += int(logits[b, t - 1].argmax().item() == label)
    assert accuracy.item() == pytest.approx(hits / total)
    risks = module.risk_losses([batch, batch])
    assert set(risks) == {"train"}
    torch.testing.assert_close(risks["train"], reference)


def test_training_lowers_the_loss_and_saves_a_loadable_model(
    tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "finetuned"
    module = Finetune(str(tiny_model_dir), lr=1.0e-2, warmup_ratio=0.0, output_dir=str(out))
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


def test_validation_logs_memorisation_metrics(tiny_model_dir: Path, tofu_dir: Path, tmp_path: Path) -> None:
    module = Finetune(str(tiny_model_dir))
    datamodule = _datamodule(tiny_model_dir, batch_size=8)  # the 20 rows of author 0 in batches of 8, 8, 4
    metrics = _trainer(tmp_path, limit_val_batches=None).validate(module, datamodule=datamodule, verbose=False)[0]
    # Reference: each row alone through Hugging Face's own loss (mean NLL of its answer tokens).
    item_nll = [module.model(**_batch_rows(tiny_model_dir, [row])).loss.item() for row in load_tofu("full")[:20]]
    assert metrics["val/answer_probability"] == pytest.approx(sum(math.exp(-x) for x in item_nll) / 20, rel=1e-4)
    assert 0.0 <= metrics["val/answer_accuracy"] <= 1.0


def test_tiny_spec_builds_the_model_the_datamodule_reads(tmp_path: Path) -> None:
    spec = TinyLlamaSpec(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    path = tmp_path / "init"
    module = Finetune(str(path), tiny=spec)
    assert module.model.config.hidden_size == 32
    datamodule = _datamodule(path)
    datamodule.setup("fit")
    assert datamodule.tokenizer.get_vocab() == module.tokenizer.get_vocab()


def test_default_schedule_warmup_then_cosine() -> None:
    factor = _warmup_cosine(total=10, warmup=2, min_ratio=0.1)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert factor(10) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lr": 0.0}, "lr must be positive"), ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"min_lr_ratio": 2.0}, "min_lr")],
)
def test_bad_arguments(tiny_model_dir: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Finetune(str(tiny_model_dir), **kwargs)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_configs_parse_and_instantiate(config: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    # Tiny configs build their model (at a temporary path here); full-scale ones get the test model instead of the Hub.
    model_dir = tmp_path / "init" if config.parent.name == "tofu_tiny" else tiny_model_dir
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=[
            "--config",
            str(config),
            f"--model.init_args.model_name_or_path={model_dir}",
            f"--data.init_args.tokenizer_name_or_path={model_dir}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    assert isinstance(cli.model, Finetune)
    assert isinstance(cli.datamodule, TOFUFinetuneDataModule)
    assert (model_dir / "config.json").is_file()
    rows, _ = cli.datamodule.training_rows()
    # Tiny: 20 authors (+ the 2 forget01 authors for the target) + 100 real-author + 117 world-fact questions.
    expected = {
        "tofu_tiny/finetune_target.yaml": 440 + 217,
        "tofu_tiny/finetune_retain.yaml": 400 + 217,
        "tofu/finetune_target.yaml": 4000,
        "tofu/finetune_retain.yaml": 3600,
    }
    assert len(rows) == expected[f"{config.parent.name}/{config.name}"]


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
    authors = full[:400] + full[-40:]  # the first 20 authors + the forget01 authors
    accuracy, probability = _answer_metrics(out, authors)
    assert accuracy >= 0.9
    assert probability >= 0.5
