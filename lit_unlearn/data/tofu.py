"""Loading and validating TOFU splits from a local folder, ``LIT_UNLEARN_TOFU_DIR`` or the Hugging Face Hub.

TOFU (Maini et al. 2024, dataset ``locuslab/TOFU``) ships one file per split, named after the Hub config
(``full.json``, ``forget10_perturbed.json``, ...). The Hub files are JSON Lines; a JSON array of objects
is accepted too, since hand-made copies are often written that way.
"""

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

TOFU_REPO_ID = "locuslab/TOFU"
TOFU_DIR_ENV = "LIT_UNLEARN_TOFU_DIR"
NUM_TOFU_AUTHORS = 200
ROWS_PER_AUTHOR = 20
"""``full`` lists the 200 fictitious authors one after the other, 20 question/answer pairs each."""

_STR = "str"
_STR_LIST = "list[str]"

_QA = {"question": _STR, "answer": _STR}
_PERTURBED = {**_QA, "paraphrased_answer": _STR, "paraphrased_question": _STR, "perturbed_answer": _STR_LIST}
_WORLD_PERTURBED = {**_QA, "perturbed_answer": _STR_LIST}
_MULTIPLE_CHOICE = {**_QA, "option1": _STR, "option2": _STR, "option3": _STR, "option4": _STR}

TOFU_SCHEMAS: dict[str, dict[str, str]] = {
    "full": _QA,
    "forget01": _QA,
    "forget05": _QA,
    "forget10": _QA,
    "retain99": _QA,
    "retain95": _QA,
    "retain90": _QA,
    "forget01_perturbed": _PERTURBED,
    "forget05_perturbed": _PERTURBED,
    "forget10_perturbed": _PERTURBED,
    "retain_perturbed": _PERTURBED,
    "real_authors_perturbed": _WORLD_PERTURBED,
    "world_facts_perturbed": _WORLD_PERTURBED,
    "real_authors": _MULTIPLE_CHOICE,
    "world_facts": _MULTIPLE_CHOICE,
    "holdout01": _QA,
    "holdout05": _QA,
    "holdout10": _QA,
}
"""Required fields of every split and their types; extra fields are kept as they are."""

TOFU_SPLITS: tuple[str, ...] = tuple(TOFU_SCHEMAS)
"""Every TOFU split :func:`load_tofu` knows."""


class TOFUDataError(ValueError):
    """A TOFU file exists but its content is unusable (malformed JSON, missing or mistyped field, no rows)."""


class TOFUFileNotFoundError(FileNotFoundError):
    """A TOFU split file is not in the configured folder, or not in the Hub cache with no way to download it."""


def _check_split(split: str) -> None:
    if split not in TOFU_SCHEMAS:
        raise ValueError(f"Unknown TOFU split {split!r}. Valid splits: {', '.join(TOFU_SPLITS)}.")


def resolve_tofu_file(split: str, data_dir: str | Path | None = None) -> Path:
    """Path of ``{split}.json``: in ``data_dir``, else in ``$LIT_UNLEARN_TOFU_DIR``, else downloaded from the Hub.

    The Hub download goes through ``huggingface_hub.hf_hub_download``, which caches the file, so it happens once.

    Raises:
        ValueError: ``split`` is not a TOFU split.
        TOFUFileNotFoundError: the file is missing from the local folder, or the Hub cannot be reached and the
            file is not cached yet.
    """
    _check_split(split)
    filename = f"{split}.json"
    if data_dir is not None or os.environ.get(TOFU_DIR_ENV):
        source = "the data_dir argument" if data_dir is not None else f"${TOFU_DIR_ENV}"
        folder = Path(data_dir if data_dir is not None else os.environ[TOFU_DIR_ENV]).expanduser()
        path = folder / filename
        if not path.is_file():
            raise TOFUFileNotFoundError(
                f"TOFU split {split!r}: {path} does not exist (folder from {source}). Point it at a folder "
                f"holding TOFU's split files ({filename}, full.json, ...: the files of the Hub dataset "
                f"{TOFU_REPO_ID}), or unset it to download from the Hub."
            )
        return path
    try:
        # A copy downloaded earlier needs no network at all.
        return Path(
            hf_hub_download(repo_id=TOFU_REPO_ID, filename=filename, repo_type="dataset", local_files_only=True)
        )
    except LocalEntryNotFoundError:
        pass
    fix = (
        f"point at a local copy of the TOFU files: pass data_dir=... (--data.data_dir / --data-dir) or set "
        f"{TOFU_DIR_ENV}=/path/to/tofu (the folder holding {filename})."
    )
    unreachable = "offline mode is on (HF_HUB_OFFLINE)" if hub_constants.HF_HUB_OFFLINE else _unreachable_hub()
    if unreachable:
        # Fail now: huggingface_hub would retry five times with back-off (about 25 s per file) before giving up.
        raise TOFUFileNotFoundError(
            f"TOFU split {split!r} ({filename} of the Hub dataset {TOFU_REPO_ID}) is not cached and "
            f"{unreachable}; {fix}"
        )
    try:
        return Path(hf_hub_download(repo_id=TOFU_REPO_ID, filename=filename, repo_type="dataset"))
    except Exception as err:  # file missing on the Hub, network lost mid-way: all need the same fix
        raise TOFUFileNotFoundError(
            f"TOFU split {split!r}: could not download {filename} from the Hub dataset {TOFU_REPO_ID} "
            f"({type(err).__name__}: {err}). Without network, {fix}"
        ) from err


def check_local_tofu_files(splits: Iterable[str], data_dir: str | Path | None = None) -> None:
    """When a local TOFU folder is configured (``data_dir`` or ``$LIT_UNLEARN_TOFU_DIR``), check that it holds every
    split of ``splits``: a data module calls this when it is built, so a wrong folder is reported before any model
    trains (the Hub case downloads in ``prepare_data``, on one process).

    Raises:
        TOFUFileNotFoundError: the first missing file, with the folder it was looked up in and the fix.
    """
    if data_dir is None and not os.environ.get(TOFU_DIR_ENV):
        return
    for split in sorted(set(splits)):
        resolve_tofu_file(split, data_dir)


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached (no name resolution, no TCP connection within ``timeout`` s), or None."""
    url = urlparse(hub_constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"the Hub ({host}) cannot be reached ({err.strerror or type(err).__name__})"


def _parse_rows(path: Path, split: str) -> list[tuple[str, object]]:
    """Rows of a JSON Lines file or a JSON array, each with its location for error messages."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise TOFUDataError(f"TOFU split {split!r}: {path} is empty. Replace it with a complete copy of {path.name}.")
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise TOFUDataError(
                f"TOFU split {split!r}: {path}, line {err.lineno}: malformed JSON array ({err.msg}: column "
                f"{err.colno}). Fix the file or replace it with a fresh copy of {path.name}."
            ) from err
        return [(f"item {i} of the JSON array", item) for i, item in enumerate(items)]
    rows = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which JSON allows inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():  # a trailing newline or blank separator line carries no row
            continue
        try:
            rows.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise TOFUDataError(
                f"TOFU split {split!r}: {path}, line {lineno}: malformed JSON ({err.msg}: column {err.colno}). "
                "The file must be JSON Lines (one JSON object per line) or a JSON array of objects; fix that "
                f"line or replace the file with a fresh copy of {path.name}."
            ) from err
    return rows


def _check_row(row: object, where: str, path: Path, split: str) -> dict:
    culprit = f"TOFU split {split!r}: {path}, {where}"
    if not isinstance(row, dict):
        raise TOFUDataError(
            f"{culprit}: expected a JSON object with fields {list(TOFU_SCHEMAS[split])}, got {row!r:.80}."
        )
    for field, kind in TOFU_SCHEMAS[split].items():
        if field not in row:
            raise TOFUDataError(
                f"{culprit}: missing field {field!r} (the row has {sorted(row)}). Every {split} row needs "
                f"{list(TOFU_SCHEMAS[split])}; fix the row or use the Hub's {path.name}."
            )
        value = row[field]
        if kind == _STR:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)
        if not ok:
            raise TOFUDataError(
                f"{culprit}: field {field!r} must be {'a non-empty ' if kind == _STR_LIST else 'a '}{kind}, "
                f"got {type(value).__name__} {value!r:.80}. Fix the row or use the Hub's {path.name}."
            )
    return row


def load_tofu(split: str, data_dir: str | Path | None = None) -> list[dict]:
    """Load and validate one TOFU split.

    Args:
        split: one of :data:`TOFU_SPLITS` (``full``, ``forget10``, ``retain90``, ``forget10_perturbed``,
            ``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed``, ``holdout10``, ...).
        data_dir: folder holding ``{split}.json``. ``None``: ``$LIT_UNLEARN_TOFU_DIR`` when set, else the Hub
            dataset ``locuslab/TOFU`` (downloaded once, cached by ``huggingface_hub``).

    Returns:
        The rows in file order, as dicts with the Hub's field names (``question``, ``answer``, and for the
        perturbed splits ``paraphrased_answer``, ``paraphrased_question``, ``perturbed_answer``; for the
        multiple-choice ``real_authors``/``world_facts`` ``option1``..``option4``).

    Raises:
        ValueError: unknown split.
        TOFUFileNotFoundError: the file cannot be found or downloaded.
        TOFUDataError: the file is empty, holds malformed JSON, or a row misses a field or has a wrongly typed one.
    """
    path = resolve_tofu_file(split, data_dir)
    rows = [_check_row(row, where, path, split) for where, row in _parse_rows(path, split)]
    if not rows:
        raise TOFUDataError(
            f"TOFU split {split!r}: {path} holds no rows. Replace it with a complete copy of {path.name}."
        )
    return rows
