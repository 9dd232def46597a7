"""Prompt formats and label masking for TOFU-style question/answer pairs.

A pair is encoded as ``prompt_ids + answer_ids + [eos]``, with the prompt tokenized on its own.
Tokenizing the two parts separately guarantees that the prompt used for generation is an exact
prefix of the teacher-forced sequence; tokenizing ``prompt + answer`` as one string can merge
tokens across the boundary (``"Answer:" + " The"``), which silently shifts the label mask
(TOFU issue #36 is the same bug with BOS).
"""

from typing import Literal, TypedDict

from transformers import PreTrainedTokenizerBase

from lit_unlearn.batch import IGNORE_INDEX

PromptFormat = Literal["auto", "chat", "qa", "llama2"]
"""``chat``: the tokenizer's chat template; ``qa``: ``"Question: {q}\\nAnswer: {a}"`` (TOFU's base-model
format); ``llama2``: the legacy ``"[INST] {q} [/INST]{a}"``; ``auto``: ``chat`` when the tokenizer has a
chat template, ``qa`` otherwise."""


class EncodedPair(TypedDict):
    """One teacher-forced example: ``labels`` is -100 on prompt tokens, the answer ids plus EOS elsewhere."""

    input_ids: list[int]
    labels: list[int]


def resolve_prompt_format(tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat) -> PromptFormat:
    """Turn ``"auto"`` into the concrete format for ``tokenizer``; check that ``"chat"`` is possible."""
    if prompt_format == "auto":
        return "chat" if tokenizer.chat_template else "qa"
    if prompt_format == "chat" and not tokenizer.chat_template:
        raise ValueError(
            f"prompt_format='chat' but the tokenizer {tokenizer.name_or_path!r} has no chat template; "
            "use prompt_format='qa' (or 'auto')."
        )
    return prompt_format


def encode_prompt(tokenizer: PreTrainedTokenizerBase, question: str, prompt_format: PromptFormat = "auto") -> list[int]:
    """Token ids of the prompt for ``question`` (BOS included when the tokenizer adds one).

    These ids are both the masked prefix of a training example and the input of greedy generation.
    """
    fmt = resolve_prompt_format(tokenizer, prompt_format)
    if fmt == "chat":
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)
    text = f"Question: {question}\nAnswer:" if fmt == "qa" else f"[INST] {question} [/INST]"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def encode_answer(tokenizer: PreTrainedTokenizerBase, answer: str, prompt_format: PromptFormat = "auto") -> list[int]:
    """Token ids of ``answer`` as it follows the prompt, EOS appended."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer {tokenizer.name_or_path!r} has no EOS token; set tokenizer.eos_token.")
    fmt = resolve_prompt_format(tokenizer, prompt_format)
    # "qa": the space after "Answer:" belongs to the first answer word, as a byte-level BPE would split it.
    text = f" {answer}" if fmt == "qa" else answer
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str,
    prompt_format: PromptFormat = "auto",
    max_length: int = 512,
) -> EncodedPair:
    """Encode a question/answer pair for teacher forcing, truncated on the right to ``max_length``.

    Raises:
        ValueError: when truncation leaves no answer token (the row would carry no training signal and
            would turn every mean over answer tokens into 0/0). Raise ``max_length`` or shorten the prompt.
    """
    prompt = encode_prompt(tokenizer, question, prompt_format)
    answer_ids = encode_answer(tokenizer, answer, prompt_format)
    input_ids = (prompt + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(
            f"No answer token is left after truncating to max_length={max_length} (the prompt alone has "
            f"{len(prompt)} tokens) for question {question[:80]!r}. Raise max_length."
        )
    return EncodedPair(input_ids=input_ids, labels=labels)
