"""Keeps N model replicas equal to one model trained on the global batch (used by distributed.py).

Each rank runs forward and backward on its slice of the global batch. Three things in the model
see the whole batch in one process and need the other ranks' samples here:
- BatchNorm's batch mean and variance in training mode: computed from sums all-reduced across
  ranks (torch's SyncBatchNorm runs on CUDA only, and it would replace AffineBatchNorm2d with a
  class whose eval formula is not the one export relies on);
- Brevitas' activation scales while they are measured (the first ACT_STATS_STEPS steps): the
  scale is the 99.9th percentile (or max) of the batch, which no per-rank summary gives, so the
  quantizer's input is all-gathered and every rank takes the same percentile of the same values;
- the gradients: averaged by DistributedDataParallel.
Both collectives above are differentiable: their backward sums the gradients of all ranks, so
with DDP's averaging every rank steps with the gradient of the global batch's mean loss.

The patches are per instance (`module.forward`, a wrapped view module), add no tensors to
state_dict and are removed again by `synchronized`, so checkpoints and eval are unchanged.
They need Brevitas' JIT off (its default): scripted modules cannot be patched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lowbit.train.checkpoint import _runtime_stats_modules, runtime_stats_state


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the same all-reduce of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = x.detach().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class _GatherBatch(torch.autograd.Function):
    """Concatenates every rank's tensor along dim 0; backward sums the gradients, keeps a slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rank = group, dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(dist.get_world_size(ctx.group))[ctx.rank], None


class _GatheredView(nn.Module):
    """Wraps a Brevitas stats view so that statistics are taken over the global batch."""

    def __init__(self, view: nn.Module, group) -> None:
        super().__init__()
        self.view, self.group = view, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.view(_GatherBatch.apply(x, self.group))


def _sync_bn_forward(bn: _BatchNorm, x: torch.Tensor, *, group, original) -> torch.Tensor:
    """BatchNorm over the global batch in training mode; `original` (bn's own forward) in eval."""
    if not bn.training or not bn.track_running_stats:
        return original(x)
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // x.shape[1] * dist.get_world_size(group)  # shards have equal size
    mean = _SumOverRanks.apply(x.sum(dims), group) / count
    shape = (1, -1) + (1,) * (x.dim() - 2)
    centered = x - mean.view(shape)
    squares = _SumOverRanks.apply((centered * centered).sum(dims), group)
    var = squares / count
    with torch.no_grad():  # the update of torch's CPU kernel; running_var takes the unbiased var
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / int(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.copy_(mean * factor + bn.running_mean * (1 - factor))
        bn.running_var.copy_(squares / (count - 1) * factor + bn.running_var * (1 - factor))
    y = centered * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


@contextmanager
def synchronized(model: nn.Module, group) -> Iterator[nn.Module]:
    """Patches `model`'s BatchNorms and activation-scale statistics to see all ranks' samples."""
    batchnorms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    stats = list(_runtime_stats_modules(model).values())
    for bn in batchnorms:
        original = bn.forward
        bn.forward = MethodType(
            lambda self, x, original=original: _sync_bn_forward(
                self, x, group=group, original=original
            ),
            bn,
        )
    for module in stats:
        module.stats_input_view_shape_impl = _GatheredView(
            module.stats_input_view_shape_impl, group
        )
    try:
        yield model
    finally:
        for bn in batchnorms:
            del bn.forward  # back to the class's forward
        for module in stats:
            module.stats_input_view_shape_impl = module.stats_input_view_shape_impl.view


def replica_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns every tensor that must agree across ranks: parameters, buffers, Brevitas state."""
    state = {f"param.{k}": v.detach() for k, v in model.named_parameters()}
    state.update({f"buffer.{k}": v.detach() for k, v in model.named_buffers()})
    state.update({f"quant.{k}": v for k, v in runtime_stats_state(model).items()})
    return state


def replica_digest(model: nn.Module) -> str:
    """Returns a SHA-256 of `replica_state`: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for key, tensor in sorted(replica_state(model).items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
