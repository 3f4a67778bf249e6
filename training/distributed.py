"""Where this process sits in a torchrun job, and how it joins the others.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed` reads them, picks the device
(under torchrun, GPU = local rank) and joins the process group (NCCL on CUDA, Gloo on CPU).
A single process without torchrun is world size 1 and joins nothing. `data_parallel` wraps
the backbone in DistributedDataParallel with the run's opt-in communication settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, local rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` (CUDA when available), `cpu` or `cuda`; under torchrun, GPU = local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                "--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu"
            )
        return torch.device("cuda", local_rank if requested == "cuda" else int(requested[5:]))
    if requested != "cpu":
        raise ValueError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Read torchrun's environment; join the process group when WORLD_SIZE > 1 (NCCL on CUDA,
    Gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size, device)


@dataclass(frozen=True)
class DdpCommunication:
    """How DDP all-reduces the backbone's gradients (all opt-in; see docs/training.md):
    `fp16_compress` sends them as float16 (DDP's `fp16_compress_hook`, half the bytes; they
    are averaged in float16 and cast back), `bucket_cap_mb` sizes the gradient buckets (None:
    PyTorch's 25 MiB), `static_graph` tells DDP the used parameters never change."""

    fp16_compress: bool = False
    bucket_cap_mb: float | None = None
    static_graph: bool = False


def data_parallel(
    module: nn.Module, context: DistributedContext, communication: DdpCommunication
) -> DistributedDataParallel:
    """`module` under DDP in the joined process group. Buffers are not broadcast: each rank
    keeps its own BatchNorm statistics, as arcface_torch does."""
    options: dict[str, object] = {}
    if communication.bucket_cap_mb is not None:
        options["bucket_cap_mb"] = communication.bucket_cap_mb
    model = DistributedDataParallel(
        module,
        device_ids=[context.device.index] if context.device.type == "cuda" else None,
        broadcast_buffers=False,
        static_graph=communication.static_graph,
        **options,
    )
    if communication.fp16_compress:
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    return model
