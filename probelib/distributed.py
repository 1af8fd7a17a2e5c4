"""DistributedDataParallel helpers for :func:`probelib.training.train` under ``torchrun``: how to
join the group, shard, wrap and reduce. The training loop itself is the one in
:mod:`probelib.training.loop` (no second copy here).

``torchrun --nproc_per_node N -m probelib train CONFIG`` (or any script calling ``train``/
``train_or_load`` launched by torchrun) trains one model over N processes:

* the process group starts from torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): ``nccl`` on CUDA (one GPU per local rank),
  ``gloo`` on the CPU;
* the configuration's batch size is the *global* batch: each rank takes ``batch_size / N`` of
  it, from a :class:`~torch.utils.data.DistributedSampler` seeded with the run's seed and
  re-shuffled every epoch (``set_epoch``); gradients are averaged by DDP, so a step sees the
  same global batch as a single process would;
* TRADES / AT inner attacks run on each rank's local shard, with the unwrapped model in eval
  mode (no gradient synchronisation); augmentation and attack noise come from a per-rank
  generator (seed + rank);
* loss, train accuracy and test accuracy are summed over ranks (``all_reduce``);
* rank 0 alone writes checkpoints (atomically, the same format); a killed run resumes from
  the last checkpoint with the same world size (the world size is part of the resume
  signature, and every rank's RNG state is stored).

Outside torchrun every helper is a no-op, so single-process code paths are unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

__all__ = ["DistContext", "launched_by_torchrun", "init_distributed", "context", "is_main_process", "barrier",
           "shutdown", "local_batch_size", "wrap_model", "shard_order", "all_reduce_sums", "gather_objects",
           "steps_per_epoch"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT: DistContext | None = None


def launched_by_torchrun() -> bool:
    """True when torchrun (or an equivalent launcher) set this process's rank and world size."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def init_distributed(device: str | torch.device | None = None) -> DistContext | None:
    """Join the process group torchrun describes (once); None when not launched by torchrun.

    ``device`` None picks ``cuda:<LOCAL_RANK>`` with nccl when CUDA is present, else the CPU with
    gloo; ``device="cpu"`` forces gloo; a CUDA device maps to this rank's local GPU.
    """
    global _CONTEXT
    if _CONTEXT is not None and dist.is_initialized():
        return _CONTEXT
    if not launched_by_torchrun():
        return None
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    wanted = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    if wanted is not None and wanted.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this node; pass device='cpu' (gloo)")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s); "
                             "use torchrun --nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    _CONTEXT = DistContext(rank, world, local, dev, backend)
    return _CONTEXT


def context() -> DistContext | None:
    """The current context (after :func:`init_distributed`), or None in a single process."""
    return _CONTEXT if _CONTEXT is not None and dist.is_initialized() else None


def is_main_process() -> bool:
    """True on rank 0, and in a single process."""
    ctx = context()
    return ctx is None or ctx.is_main


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if context() is not None:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def local_batch_size(global_batch: int, ctx: DistContext | None) -> int:
    """Each rank's share of the global batch; it must divide evenly."""
    if ctx is None:
        return global_batch
    if global_batch % ctx.world_size:
        raise ValueError(f"the global batch size {global_batch} does not split evenly over {ctx.world_size} "
                         f"processes; use a batch size divisible by {ctx.world_size}, or --nproc_per_node that "
                         f"divides {global_batch}")
    return global_batch // ctx.world_size


class _DDP(DistributedDataParallel):
    """DDP whose eval-mode forward calls the wrapped module directly: the TRADES/AT inner attacks
    (eval mode, gradients w.r.t. the input only) must not arm DDP's gradient reduction."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` (already on ``ctx.device``) wrapped for data-parallel training."""
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return _DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def shard_order(n: int, ctx: DistContext, epoch: int, seed: int) -> torch.Tensor:
    """This rank's indices of an ``n``-item training set for ``epoch``, in order: a
    DistributedSampler shard (seeded, shuffled per epoch, padded so every rank has the same number
    of batches). The training loop batches them as it batches a single process's permutation."""
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def steps_per_epoch(n: int, batch_size: int, ctx: DistContext) -> int:
    """Batches per epoch on every rank (the shard has ceil(n / world) items)."""
    shard = -(-n // ctx.world_size)
    return -(-shard // batch_size)


def all_reduce_sums(values: list[float], ctx: DistContext | None) -> list[float]:
    """Sum each value over the ranks (float64)."""
    if ctx is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def gather_objects(obj: Any, ctx: DistContext | None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if ctx is None:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
