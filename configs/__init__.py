"""The LightningCLI configs shipped with lit-unlearn, installed as the data package ``lit_unlearn.configs``.

See ``lit_unlearn.config_hub`` and ``lit-unlearn configs``; every config is a plain YAML file next to this one."""
