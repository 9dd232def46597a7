"""TOFU evaluation refuses a model sharded over several processes instead of hanging in generation."""

from unittest.mock import Mock

import pytest
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from lit_unlearn.eval.mixin import TOFUEvalMixin


class _Host(TOFUEvalMixin):
    def __init__(self, strategy: object, world_size: int) -> None:
        self.trainer = Mock(strategy=strategy, world_size=world_size)


def test_sharded_over_two_processes_is_refused_with_the_fix() -> None:
    host = _Host(Mock(spec=ModelParallelStrategy), world_size=2)
    for hook in (host.on_validation_epoch_start, host.on_test_epoch_start):
        with pytest.raises(RuntimeError, match=r"limit_val_batches=0.*lit-unlearn test"):
            hook()


@pytest.mark.parametrize(
    ("strategy", "world_size"), [(Mock(spec=ModelParallelStrategy), 1), (Mock(spec=DDPStrategy), 2)]
)
def test_one_process_or_replicas_pass_the_check(strategy: object, world_size: int) -> None:
    _Host(strategy, world_size)._check_strategy()
