"""Data-parallel runs under ``torchrun``: which rank this process is, and the process group it joins.

``torchrun --nproc-per-node N -m lmscope sae train --store ... --out ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set; :func:`init_from_env` joins them into one process group
(gloo on the CPU, nccl on CUDA). Outside torchrun every helper here answers for a single process, so
the same code runs either way. Only rank 0 writes result folders and checkpoints; every rank reads them.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files and prints progress."""
    return world()[0] == 0


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun described in the environment; True if this call created it."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def any_(t: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool tensor over ranks."""
    if world()[1] == 1:
        return t
    flag = t.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.bool()


def average(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's mean over ranks (equal batch shares: the mean of the ranks' means is the global mean)."""
    size = world()[1]
    if size == 1:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    flat /= size
    out, at = [], 0
    for t in tensors:
        out.append(flat[at : at + t.numel()].reshape(t.shape).to(t.dtype))
        at += t.numel()
    return out
