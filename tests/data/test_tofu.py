"""load_tofu: every split, source resolution (argument, environment, Hub) and every bad-input case."""

import json
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from lit_unlearn.data import TOFU_SPLITS, TOFUDataError, load_tofu, tofu
from lit_unlearn.data.tofu import TOFU_DIR_ENV, TOFU_REPO_ID


@pytest.fixture(scope="module")
def manifest(tofu_dir: Path) -> dict:
    return json.loads((tofu_dir / "MANIFEST.json").read_text())


@pytest.mark.parametrize("split", TOFU_SPLITS)
def test_every_split_loads_with_the_manifest_row_count(split: str, manifest: dict) -> None:
    rows = load_tofu(split)
    assert len(rows) == manifest[split]["rows"]
    assert all(isinstance(r["question"], str) and isinstance(r["answer"], str) for r in rows)


def test_split_list_matches_the_manifest(manifest: dict) -> None:
    assert set(TOFU_SPLITS) == set(manifest)


def test_forget_and_retain_splits_partition_full() -> None:
    full = load_tofu("full")
    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        assert load_tofu(retain) + load_tofu(forget) == full
    perturbed = load_tofu("retain_perturbed")
    assert [(r["question"], r["answer"]) for r in perturbed] == [(r["question"], r["answer"]) for r in full[:400]]


def _lines(tofu_dir: Path, split: str, n: int) -> list[str]:
    with open(tofu_dir / f"{split}.json") as f:
        return [next(f) for _ in range(n)]


def _write(folder: Path, split: str, text: str) -> Path:
    path = folder / f"{split}.json"
    path.write_text(text)
    return path


def test_argument_wins_over_environment(tofu_dir: Path, tmp_path: Path) -> None:
    _write(tmp_path, "forget01", "".join(_lines(tofu_dir, "forget01", 3)))
    assert len(load_tofu("forget01", tmp_path)) == 3
    assert len(load_tofu("forget01", str(tmp_path))) == 3
    assert len(load_tofu("forget01")) == 40  # the environment variable points at the full copy


def test_environment_variable_is_used(tofu_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "holdout01", "".join(_lines(tofu_dir, "holdout01", 2)))
    monkeypatch.setenv(TOFU_DIR_ENV, str(tmp_path))
    assert load_tofu("holdout01") == [json.loads(line) for line in _lines(tofu_dir, "holdout01", 2)]


def test_hub_download_when_no_local_folder(tofu_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(repo_id: str, filename: str, repo_type: str, local_files_only: bool = False) -> str:
        calls.append((repo_id, filename, repo_type, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(tofu_dir / filename)

    monkeypatch.delenv(TOFU_DIR_ENV)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(tofu, "hf_hub_download", fake_download)
    monkeypatch.setattr(tofu, "_unreachable_hub", lambda: None)
    assert len(load_tofu("world_facts")) == 117
    # The cache is asked first, then the Hub.
    assert calls == [
        (TOFU_REPO_ID, "world_facts.json", "dataset", True),
        (TOFU_REPO_ID, "world_facts.json", "dataset", False),
    ]


def test_unreachable_hub_fails_at_once_without_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no cached copy: one quick probe, no download attempt (huggingface_hub retries 5 times)."""
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    downloads = []

    def fake_download(repo_id: str, filename: str, repo_type: str, local_files_only: bool = False) -> str:
        downloads.append(local_files_only)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.delenv(TOFU_DIR_ENV)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(tofu, "hf_hub_download", fake_download)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1\) cannot be reached.*LIT_UNLEARN_TOFU_DIR"):
        load_tofu("forget01")
    assert time.perf_counter() - start < 10
    assert downloads == [True]  # only the cache lookup


def test_offline_without_cache_says_how_to_point_at_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOFU_DIR_ENV)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"forget10.json.*locuslab/TOFU.*LIT_UNLEARN_TOFU_DIR") as info:
        load_tofu("forget10")
    assert "data_dir=" in str(info.value)


def test_unknown_split_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown TOFU split 'forget15'.*forget01, forget05, forget10"):
        load_tofu("forget15")


def test_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"full\.json does not exist \(folder from the data_dir argument\)"):
        load_tofu("full", tmp_path)


def test_json_array_is_accepted(tofu_dir: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in _lines(tofu_dir, "forget01_perturbed", 3)]
    _write(tmp_path, "forget01_perturbed", json.dumps(rows, indent=2))
    assert load_tofu("forget01_perturbed", tmp_path) == rows


def test_blank_lines_are_allowed(tofu_dir: Path, tmp_path: Path) -> None:
    lines = _lines(tofu_dir, "forget01", 2)
    _write(tmp_path, "forget01", lines[0] + "\n" + lines[1] + "\n\n")
    assert len(load_tofu("forget01", tmp_path)) == 2


@pytest.mark.parametrize("text", ["", "  \n\n", "[]"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "full", text)
    with pytest.raises(TOFUDataError, match=r"TOFU split 'full': .*full\.json (is empty|holds no rows)"):
        load_tofu("full", tmp_path)


def test_malformed_line_names_file_and_line(tofu_dir: Path, tmp_path: Path) -> None:
    lines = _lines(tofu_dir, "forget01", 3)
    lines[1] = lines[1][:40] + "\n"  # cut mid-string
    path = _write(tmp_path, "forget01", "".join(lines))
    with pytest.raises(TOFUDataError, match=rf"'forget01': {path}, line 2: malformed JSON") as info:
        load_tofu("forget01", tmp_path)
    assert "fresh copy of forget01.json" in str(info.value)


def test_malformed_array_names_the_line(tmp_path: Path) -> None:
    _write(tmp_path, "holdout05", '[\n{"question": "q", "answer": "a"},\n{"question": "q" "answer": "a"}\n]')
    with pytest.raises(TOFUDataError, match=r"holdout05\.json, line 3: malformed JSON array"):
        load_tofu("holdout05", tmp_path)


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    _write(tmp_path, "full", '{"question": "q", "answer": "a"}\n["q", "a"]\n')
    with pytest.raises(TOFUDataError, match=r"line 2: expected a JSON object"):
        load_tofu("full", tmp_path)


def _edited(tofu_dir: Path, tmp_path: Path, split: str, edit: dict, drop: str | None = None) -> None:
    rows = [json.loads(line) for line in _lines(tofu_dir, split, 3)]
    rows[2].update(edit)
    if drop:
        del rows[2][drop]
    _write(tmp_path, split, "".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    ("split", "field"),
    [
        ("full", "answer"),
        ("forget05_perturbed", "paraphrased_answer"),
        ("retain_perturbed", "perturbed_answer"),
        ("world_facts_perturbed", "perturbed_answer"),
        ("real_authors", "option3"),
    ],
)
def test_missing_field_names_line_and_field(tofu_dir: Path, tmp_path: Path, split: str, field: str) -> None:
    _edited(tofu_dir, tmp_path, split, {}, drop=field)
    with pytest.raises(TOFUDataError, match=rf"'{split}': .*{split}\.json, line 3: missing field '{field}'"):
        load_tofu(split, tmp_path)


@pytest.mark.parametrize(
    ("split", "field", "value", "kind"),
    [
        ("forget10", "question", 7, "a str"),
        ("forget10_perturbed", "paraphrased_answer", ["a"], "a str"),
        ("forget10_perturbed", "perturbed_answer", "one answer", "a non-empty list\\[str\\]"),
        ("real_authors_perturbed", "perturbed_answer", ["ok", 3], "a non-empty list\\[str\\]"),
        ("real_authors_perturbed", "perturbed_answer", [], "a non-empty list\\[str\\]"),
        ("world_facts", "option1", None, "a str"),
    ],
)
def test_wrongly_typed_field(tofu_dir: Path, tmp_path: Path, split: str, field: str, value: object, kind: str) -> None:
    _edited(tofu_dir, tmp_path, split, {field: value})
    with pytest.raises(TOFUDataError, match=rf"line 3: field '{field}' must be {kind}"):
        load_tofu(split, tmp_path)


def test_wrongly_typed_field_in_array_names_the_item(tmp_path: Path) -> None:
    _write(tmp_path, "forget01", json.dumps([{"question": "q", "answer": "a"}, {"question": "q", "answer": 1}]))
    with pytest.raises(TOFUDataError, match=r"item 1 of the JSON array: field 'answer' must be a str, got int"):
        load_tofu("forget01", tmp_path)


def test_unicode_line_separator_inside_a_string_is_not_a_line_break(tmp_path: Path) -> None:
    # JSON allows a raw U+2028 inside strings; str.splitlines() would cut the row in two.
    _write(tmp_path, "forget01", json.dumps({"question": "q\u2028x", "answer": "a"}, ensure_ascii=False) + "\n")
    assert load_tofu("forget01", tmp_path) == [{"question": "q\u2028x", "answer": "a"}]
