"""`lit-unlearn quickstart`: model caching, missing-config errors, and (slow) the whole job end to end."""

from pathlib import Path

import pytest

from lit_unlearn import quickstart


def test_fine_tuning_is_cached_by_recipe(monkeypatch, tmp_path) -> None:
    """A finished build with the same config is reused; a changed config or a missing stamp rebuilds."""
    calls: list[list[str]] = []

    def fake_cli(args: list[str]) -> None:
        calls.append(args)
        out = Path(next(a for a in args if a.startswith("--model.output_dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr("lit_unlearn.quickstart.run_lightning_cli", fake_cli)
    config = tmp_path / "finetune.yaml"
    config.write_text("model: {}\n")
    out = tmp_path / "target"
    build = lambda: quickstart.ensure_finetuned(config, out, tmp_path / "init", tmp_path / "runs", None)  # noqa: E731
    build()
    build()
    assert len(calls) == 1
    config.write_text("model: {lr: 1.0}\n")
    build()
    assert len(calls) == 2
    (out / "recipe.sha256").unlink()  # an interrupted build leaves no stamp
    build()
    assert len(calls) == 3


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, tofu_dir) -> None:
    """The README's main job: models built from scratch, report with forget quality and model utility, figures."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert quickstart.main(["--output-dir", str(out), "--cache-dir", str(cache), "--data-dir", str(tofu_dir)]) == 0
    report = (out / "report.md").read_text()
    assert "forget quality" in report
    assert "model utility" in report
    assert (out / "fq_vs_mu.png").is_file()
    assert (out / "g_effect" / "g_effect.png").is_file()
    assert (cache / "target" / "config.json").is_file()
