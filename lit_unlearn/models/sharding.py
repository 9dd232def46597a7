"""Sharding a Hugging Face causal LM with FSDP2 (``torch.distributed.fsdp.fully_shard``) over a device mesh.

Each decoder block becomes one FSDP2 unit (its parameters are all-gathered just before the block runs and freed
right after), then the root takes what is left (embedding, final norm, lm_head). Parameter names do not change: the
sharded parameters are ``DTensor``s registered under their original names, so a checkpoint, a LoRA adapter or the
G-effect's per-layer groups see the same names as an unsharded model.
"""

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

ShardingPrecision = Literal["32-true", "bf16-mixed", "bf16-true", "16-true"]
"""The trainer precisions Lightning's ``ModelParallelStrategy`` accepts."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Llama-style models).

    Args:
        model: A ``PreTrainedModel`` (or a ``peft`` model around one).

    Returns:
        The blocks, in order.

    Raises:
        TypeError: the model's decoder has no ``layers`` list.
    """
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"Cannot find the decoder blocks of {type(model).__name__}: `model.get_decoder().layers` is not a "
            "ModuleList. Models with another layout need their own sharding (or strategy='ddp')."
        )
    return layers


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy | None:
    """FSDP2's mixed precision for a Lightning ``precision`` setting; ``None`` where none applies.

    ``"bf16-mixed"``: float32 parameters (the sharded master copy the optimiser steps), all-gathered and computed in
    bfloat16, gradients reduce-scattered in float32 (summing bfloat16 gradients over many ranks loses digits). The
    other settings keep the parameters' own dtype end to end (``"bf16-true"`` converts them, once, to bfloat16).

    Args:
        precision: ``trainer.precision``.

    Returns:
        The policy, or ``None`` for ``"32-true"``, ``"bf16-true"`` and ``"16-true"``.
    """
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def sharding_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh to ``fully_shard`` over, from the mesh Lightning's ``ModelParallelStrategy`` built.

    The strategy's mesh has a ``data_parallel`` and a ``tensor_parallel`` dimension; the data loaders split the batch
    over the first only. These modules apply no tensor parallelism, so:

    * ``tensor_parallel`` of size 1 (``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)``, the
      recommended setting): full sharding over the ``N`` data-parallel ranks, each on its own share of the batch;
    * otherwise (the strategy's defaults put every device of a node on ``tensor_parallel``): hybrid sharding over the
      2-D mesh, sharded within a ``tensor_parallel`` group and replicated across ``data_parallel`` groups. The
      devices of a ``tensor_parallel`` group then all process the same batch: memory is shared, compute is not,
      hence the warning.

    Args:
        mesh: ``LightningModule.device_mesh`` (a 1-D mesh is used as it is).

    Returns:
        A 1-D mesh (full sharding) or the 2-D mesh (hybrid sharding: replicate, shard).
    """
    names = mesh.mesh_dim_names or ()
    if mesh.ndim == 1 or "tensor_parallel" not in names:
        return mesh
    tensor_parallel = mesh["tensor_parallel"].size()
    if tensor_parallel == 1:
        return mesh["data_parallel"]
    rank_zero_warn(
        f"The device mesh puts {tensor_parallel} devices on its tensor-parallel dimension, which lit-unlearn's "
        "modules do not use (they shard with FSDP2 only): the model is sharded over them, but they all process the "
        "same batch. For data parallelism over every device, set ModelParallelStrategy(data_parallel_size="
        f"{mesh.size()}, tensor_parallel_size=1) (CLI: --trainer.strategy.data_parallel_size={mesh.size()} "
        "--trainer.strategy.tensor_parallel_size=1)."
    )
    return mesh


def fully_shard_causal_lm(model: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy | None) -> None:
    """Shard ``model`` in place: ``fully_shard`` on every decoder block, then on the root.

    Idempotent: a model that is already sharded is left as it is (Lightning may call ``configure_model`` again).

    Args:
        model: A Hugging Face causal LM (or a ``peft`` model around one); frozen parameters are sharded too.
        mesh: The mesh to shard over (:func:`sharding_mesh`): 1-D for full sharding, 2-D (replicate, shard) for
            hybrid sharding.
        policy: FSDP2's mixed precision policy, or ``None`` to compute in the parameters' dtype.
    """
    if isinstance(model, FSDPModule):
        return
    kwargs = {"mesh": mesh} if policy is None else {"mesh": mesh, "mp_policy": policy}
    for block in decoder_layers(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
