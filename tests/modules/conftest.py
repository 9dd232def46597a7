"""The unlearning batch the module tests share: forget, retain and IdK parts of real TOFU rows."""

import pytest
from tofu_batches import tofu_part, tofu_rows
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def batch(tiny_model_dir, tofu_dir) -> dict:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    forget = tofu_rows(tofu_dir, "forget01", 3)
    return {
        "forget": tofu_part(tok, forget),
        "retain": tofu_part(tok, tofu_rows(tofu_dir, "retain_perturbed", 3)),
        "idk": tofu_part(tok, [(q, "I have no idea about that.") for q, _ in forget]),
    }
