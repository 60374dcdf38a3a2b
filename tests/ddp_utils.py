"""Run a function in N real processes with a gloo process group (CPU)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ddp(fn: Callable[..., Any], world: int, *args: Any) -> None:
    """``fn(rank, world, *args)`` in ``world`` spawned processes; raises if any fails."""
    mp.start_processes(_worker, args=(world, free_port(), fn, args), nprocs=world, join=True,
                       start_method="spawn")
