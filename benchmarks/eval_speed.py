"""Time a full TOFU evaluation (teacher-forced metrics + greedy generation + ROUGE) of a tiny model on CPU.

By default the model is the project's tiny-TOFU recipe (``lit_unlearn.models.tiny``: a byte-level BPE tokenizer
trained on TOFU text, a random-init Llama with hidden 192, 3 layers, vocab 2048), built into a temporary folder;
``--model-dir`` evaluates any saved HF causal LM instead (e.g. the tiny fine-tuned target).

    python benchmarks/eval_speed.py                     # forget01 + retain + real authors + world facts (+ holdout)
    python benchmarks/eval_speed.py --forget-split forget10 --max-items 300 --max-new-tokens 200

A random model never emits EOS, so every answer runs the full ``--max-new-tokens``: the worst case for generation.
The CPU time is printed next to the wall time: on a shared machine the wall time includes waiting for other
jobs. On a CPU shared with other jobs, ``--threads 1`` avoids intra-op thread oversubscription (measured 12x faster
generation with 2 threads requested on 2 busy cores).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.data import tofu_eval_dataloaders
from lit_unlearn.eval import EvalSettings, evaluate

FOUR_SETS = ("forget", "retain", "real_authors", "world_facts")


def main(argv: list[str] | None = None) -> int:
    """Build or load the model, evaluate it, print the time of every split and the headline numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="saved HF causal LM (default: build the tiny recipe)")
    parser.add_argument("--data-dir", default=None, help="TOFU folder (default: $LIT_UNLEARN_TOFU_DIR)")
    parser.add_argument("--forget-split", default="forget01", choices=["forget01", "forget05", "forget10"])
    parser.add_argument("--max-items", type=int, default=None, help="first N rows of every split (TOFU: 300)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-holdout", action="store_true", help="skip the holdout split (membership inference)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from lit_unlearn.models.tiny import build_tiny_model
            from lit_unlearn.modules.finetune import tiny_tokenizer_corpus

            start = time.perf_counter()
            model_dir = build_tiny_model(Path(tmp) / "tiny", tiny_tokenizer_corpus(args.data_dir))
            print(f"built the tiny model in {time.perf_counter() - start:.1f} s")
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = FOUR_SETS if args.no_holdout else (*FOUR_SETS, "holdout")
    loaders = tofu_eval_dataloaders(
        tokenizer, args.forget_split, args.data_dir, batch_size=args.batch_size, max_items=args.max_items, splits=splits
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters; torch threads: {torch.get_num_threads()}")

    settings = EvalSettings(max_new_tokens=args.max_new_tokens, max_items=args.max_items)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = evaluate(model, tokenizer, settings=settings, dataloaders=loaders, progress=False)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for split, seconds in result["seconds"].items():
        print(f"{split:>13}: {len(loaders[split].dataset):4d} items in {seconds:6.1f} s")
    four = sum(result["seconds"][s] for s in FOUR_SETS)
    print(f"four TOFU evaluation sets with generation: {four:.1f} s; evaluate() in total: {total:.1f} s wall")
    # CPU time of this process: what the run costs on an idle machine when the wall time is inflated by other jobs.
    print(f"process CPU time of evaluate(): {cpu:.1f} s over {torch.get_num_threads()} thread(s)")
    headline = ("model_utility", "forget/truth_ratio", "forget/rouge_l_recall", "mia_min_k_auc", "privleak")
    print(json.dumps({k: result["summary"].get(k) for k in headline}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
