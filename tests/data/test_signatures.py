"""The DataModules' constructor signatures parse with jsonargparse, as LightningCLI will use them."""

from jsonargparse import ArgumentParser

from lit_unlearn.data import TOFUFinetuneDataModule, TOFUUnlearnDataModule


def test_tiny_target_and_unlearning_settings_parse_and_instantiate() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TOFUFinetuneDataModule, "finetune")
    parser.add_class_arguments(TOFUUnlearnDataModule, "unlearn")
    cfg = parser.parse_args(
        [
            "--finetune.tokenizer_name_or_path=tiny",
            "--finetune.num_authors=20",
            "--finetune.include_forget_authors=forget01",
            "--finetune.extra_splits=[real_authors_perturbed, world_facts_perturbed]",
            "--unlearn.tokenizer_name_or_path=tiny",
            "--unlearn.forget_split=forget01",
            "--unlearn.with_idk=true",
            "--unlearn.hold_out_retain_eval=false",
        ]
    )
    objects = parser.instantiate_classes(cfg)
    assert objects.finetune.hparams.extra_splits == ["real_authors_perturbed", "world_facts_perturbed"]
    assert objects.finetune.hparams.include_forget_authors == "forget01"
    assert objects.unlearn.retain_split == "retain99"
    assert objects.unlearn.hparams.with_idk is True
    help_text = parser.format_help()
    assert "Drop the 400 ``retain_perturbed`` rows" in help_text
    assert "Keep only the first N authors of ``full``" in help_text
