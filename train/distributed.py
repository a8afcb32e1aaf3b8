"""The few collectives the trainer needs under torchrun (the process group itself: spml.runtime)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from spml.runtime import DistInfo


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values)
    return values


def any_rank(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (one small all-reduce)."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_objects(info: DistInfo, value: Any) -> list[Any]:
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(info: DistInfo, value: Any) -> Any:
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(info: DistInfo, parameters: list[torch.nn.Parameter]) -> None:
    """Average gradients of parameters that DistributedDataParallel does not own (ROLE's labels)."""
    if not info.enabled:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= info.world_size
