"""The shared evaluation step against naive per-item computations on the tiny model: padding and batching change
nothing, generation is cut at EOS."""

from pathlib import Path

import pytest
import torch
from tofu_eval_helpers import small_loaders
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lit_unlearn.data.evaluation import TOFUEvalCollator
from lit_unlearn.data.formatting import encode_pair, encode_prompt
from lit_unlearn.eval.evaluator import TOFUEvaluator, generate_answers
from lit_unlearn.eval.settings import EvalSettings
from lit_unlearn.metrics import rouge_l_recall


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[AutoModelForCausalLM, AutoTokenizer]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _naive(model: AutoModelForCausalLM, ids: list[int], labels: list[int]) -> dict[str, float]:
    """Average NLL, ES, EM on one unpadded sequence with plain Python loops (EOS excluded from ES/EM/min-k)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    answer = [t for t in range(1, len(ids)) if labels[t] != -100]
    nll = [-logps[t - 1, ids[t]].item() for t in answer]
    scored = answer[:-1]
    hits = [logits[t - 1].argmax().item() == ids[t] for t in scored]
    k = next(k for k in range(len(hits) + 1) if all(hits[k:]))
    lowest = sorted(-x for x in nll[:-1])[: max(1, int(len(scored) * 0.4))]
    return {
        "answer_loss": sum(nll) / len(nll),
        "exact_memorization": sum(hits) / len(hits),
        "extraction_strength": 1 - k / len(hits),
        "min_k_score": -sum(lowest) / len(lowest),
    }


def test_batch_records_match_unpadded_single_item_computation(tofu_dir: Path, tiny: tuple) -> None:
    model, tokenizer = tiny
    loader = small_loaders(tofu_dir, tokenizer, items=3, batch_size=3)["forget"]
    rows = loader.dataset.rows
    evaluator = TOFUEvaluator(tokenizer, EvalSettings(max_new_tokens=6))
    evaluator.update(model, next(iter(loader)))
    records = evaluator.records({"forget": loader.dataset})["forget"]
    for record, row in zip(records, rows, strict=True):
        pair = encode_pair(tokenizer, row["question"], row["answer"])
        naive = _naive(model, pair["input_ids"], pair["labels"])
        for key, value in naive.items():
            assert record[key] == pytest.approx(value, abs=1e-4), key
        para = encode_pair(tokenizer, row["question"], row["paraphrased_answer"])
        assert record["paraphrased_loss"] == pytest.approx(
            _naive(model, para["input_ids"], para["labels"])["answer_loss"], abs=1e-4
        )
        for loss, answer in zip(record["perturbed_losses"], row["perturbed_answer"], strict=True):
            pert = encode_pair(tokenizer, row["question"], answer)
            assert loss == pytest.approx(_naive(model, pert["input_ids"], pert["labels"])["answer_loss"], abs=1e-4)
        # Left-padded batched greedy generation equals generating for the item alone.
        alone = generate_answers(model, tokenizer, _single_prompt(tokenizer, row["question"]), 6)[0]
        assert record["generation"] == alone
        assert record["rouge_l_recall"] == pytest.approx(rouge_l_recall(alone, row["answer"]))


def _single_prompt(tokenizer: AutoTokenizer, question: str) -> dict[str, torch.Tensor]:
    ids = torch.tensor([encode_prompt(tokenizer, question)])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _ScriptedLM(torch.nn.Module):
    """A stand-in with ``generate``: returns the prompt followed by fixed tokens, to test cutting at EOS."""

    def __init__(self, continuation: list[int]) -> None:
        super().__init__()
        self.continuation = continuation
        self.generation_config = None

    def generate(self, input_ids: torch.Tensor, generation_config: GenerationConfig, **kwargs: object) -> torch.Tensor:
        tail = torch.tensor([self.continuation[: generation_config.max_new_tokens]]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail], dim=1)


def test_generation_is_cut_at_eos(tiny: tuple) -> None:
    _, tokenizer = tiny
    words = tokenizer(" Paris is nice", add_special_tokens=False)["input_ids"]
    after = tokenizer(" garbage after eos", add_special_tokens=False)["input_ids"]
    lm = _ScriptedLM([*words, tokenizer.eos_token_id, *after])
    text = generate_answers(lm, tokenizer, _single_prompt(tokenizer, "Where?"), 20)[0]
    assert text == "Paris is nice"


def test_rows_beyond_the_cap_raise_naming_both_settings(tofu_dir: Path, tiny: tuple) -> None:
    """A loader built without the cap must not be cut silently: the error names both settings."""
    model, tokenizer = tiny
    loader = small_loaders(tofu_dir, tokenizer, items=5, batch_size=3)["holdout"]
    evaluator = TOFUEvaluator(tokenizer, EvalSettings(max_items=3))
    first, second = list(loader)
    evaluator.update(model, first)  # rows 0, 1, 2: within the cap
    with pytest.raises(ValueError, match=r"rows \[3, 4\] beyond the evaluation cap max_items=3") as err:
        evaluator.update(model, second)
    assert "model.evaluation.max_items" in str(err.value)
    assert "data.eval_max_items" in str(err.value)
    assert evaluator.compute()["num_items/holdout"] == 3


def test_items_repeated_by_a_sampler_count_once(tofu_dir: Path, tiny: tuple) -> None:
    """The batches two DistributedSampler shards of 5 rows give (rows 0, 2, 4 and 1, 3, 0), fed to one evaluator,
    give the single pass over the 5 rows, in row order."""
    model, tokenizer = tiny
    dataset = small_loaders(tofu_dir, tokenizer, items=5, batch_size=5)["retain"].dataset
    collate = TOFUEvalCollator(tokenizer.pad_token_id)
    settings = EvalSettings(max_new_tokens=4)
    single, sharded = TOFUEvaluator(tokenizer, settings), TOFUEvaluator(tokenizer, settings)
    for i in range(5):
        single.update(model, collate([dataset[i]]))
    for i in (0, 2, 4, 1, 3, 0):
        sharded.update(model, collate([dataset[i]]))
    assert sharded.compute() == single.compute()
    assert sharded.compute()["num_items/retain"] == 5
    records = sharded.records({"retain": dataset})["retain"]
    assert records == single.records({"retain": dataset})["retain"]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["question"] for r in records] == [row["question"] for row in dataset.rows]
