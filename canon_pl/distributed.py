"""The collectives canon-pl needs for state that is not a gradient (pure ``torch.distributed``, no Lightning).

Under DDP or FSDP the strategy averages gradients; everything else that must agree across ranks goes through here:
dead-latent counters (a latent fired on *any* rank), the first batch's input statistics, BatchTopK's selection over
the *global* batch and its inference threshold, stream positions. Outside a process group every function is the
single-process identity, so the SAE code calls them unconditionally.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_local = threading.local()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one or inside :func:`rank_local`."""
    if dist.is_available() and dist.is_initialized() and not getattr(_local, "active", False):
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def rank_local() -> Iterator[None]:
    """Work that one rank does alone (rank 0's analyses after ``fit``): no collectives, the whole data, as in one
    process. Without it, an SAE trained inside (a meta-SAE baseline) would wait forever for the other ranks."""
    previous = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = previous


def is_distributed() -> bool:
    return world()[1] > 1


def collective_device(like: Tensor | None = None) -> torch.device:
    """Where a small tensor must live for a collective: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return like.device if like is not None and like.is_cuda else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """A reduced copy of ``tensor`` (any shape): ``sum``, ``min`` or ``max`` over ranks; ``tensor`` itself alone."""
    if not is_distributed():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    work = tensor.detach().to(collective_device(tensor), copy=True)
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (plain Python values); ``[obj]`` alone."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world()[1]
    dist.all_gather_object(gathered, obj)
    return gathered


def global_batch_size(local: int, device: torch.device | None = None) -> int:
    """Tokens in the global batch (the sum of every rank's ``local``)."""
    if not is_distributed():
        return local
    return int(all_reduce(torch.tensor(local, dtype=torch.long, device=device)).item())


def fired_anywhere(fired: Tensor, local_tokens: int) -> tuple[Tensor, int]:
    """``([d_sae] bool, tokens)``: whether each latent fired on some rank this step, and the global batch's token
    count (one collective). fired: ``[d_sae]`` bool (this rank); local_tokens: this rank's batch size."""
    if not is_distributed():
        return fired, local_tokens
    counts = torch.cat([fired.long(), torch.tensor([local_tokens], dtype=torch.long, device=fired.device)])
    counts = all_reduce(counts)
    return counts[:-1] > 0, int(counts[-1])


def global_kth_largest(local_values: Tensor, k_total: int, candidates_per_rank: int | None = None) -> Tensor:
    """The ``k_total``-th largest value of the union over ranks of ``local_values`` (``[n]``, any order): a scalar.

    Each rank sends only its top ``candidates_per_rank`` values (default ``2 * k_total / world``, enough unless one
    rank holds most of the global top-k); if some rank's every sent value is at or above the result, values it did
    not send might belong too, and the exact answer is computed from every rank's top ``k_total`` instead.
    ``k_total`` larger than the union gives its smallest value.
    """
    size = world()[1]
    n_local = local_values.numel()
    if size == 1:
        return local_values.topk(min(k_total, n_local), sorted=False).values.min()
    smallest_rank_n = int(all_reduce(torch.tensor(n_local, dtype=torch.long, device=local_values.device), "min"))
    sent = min(candidates_per_rank or math.ceil(2 * k_total / size), k_total, smallest_rank_n)
    top = local_values.topk(sent, sorted=True).values  # every rank sends the same count
    work = top.to(collective_device(top))
    gathered = [torch.empty_like(work) for _ in range(size)]
    dist.all_gather(gathered, work)
    union = torch.cat(gathered)
    kth = union.topk(min(k_total, union.numel()), sorted=False).values.min().to(local_values.device)
    saturated = n_local > sent and bool(top[-1] >= kth)
    if not bool(all_reduce(torch.tensor(saturated, dtype=torch.uint8, device=local_values.device), "max")):
        return kth
    # Some rank holds more than its share of the top: every rank's top ``k_total`` (counts may differ), exactly.
    tops = all_gather_objects(local_values.detach().topk(min(k_total, n_local)).values.cpu())
    union = torch.cat(tops)
    return union.topk(min(k_total, union.numel()), sorted=False).values.min().to(local_values.device)


def all_ranks_agree(flag: bool, device: torch.device | None = None) -> bool:
    """``True`` when ``flag`` is true on every rank (for example: every rank still has a batch)."""
    if not is_distributed():
        return flag
    return bool(all_reduce(torch.tensor(int(flag), dtype=torch.uint8, device=device), "min"))


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is an FSDP2 shard (a ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@torch.no_grad()
def assign_parameter(param: Tensor, value: Tensor) -> None:
    """``param.copy_(value)`` for a plain parameter or an FSDP2-sharded one (each rank keeps its own shard of the
    full ``value``, which must be the same on every rank)."""
    if is_sharded(param):
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(value)


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of a possibly sharded one (a collective when sharded: every rank must call it)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor
