"""Actnorm's data-dependent initialisation under torch.distributed (2 CPU processes, gloo)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lgm.flow import ActNorm
from lgm.flow.base import data_initialization


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_batch(rank: int) -> torch.Tensor:
    """Each rank sees different data, with a different mean and spread."""
    g = torch.Generator().manual_seed(rank)
    return (rank * 3.0) + (1 + rank) * torch.randn(64, 3, 4, 4, generator=g)


def init_on_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = ActNorm(3)
        with data_initialization(layer):
            layer(rank_batch(rank))
        torch.save({"bias": layer.bias.detach(), "log_scale": layer.log_scale.detach()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_actnorm_initialises_identically_on_every_rank_from_the_global_batch(tmp_path):
    mp.spawn(init_on_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(r0["bias"], r1["bias"], rtol=0, atol=0)
    torch.testing.assert_close(r0["log_scale"], r1["log_scale"], rtol=0, atol=0)

    reference = ActNorm(3)
    with data_initialization(reference):
        reference(torch.cat([rank_batch(0), rank_batch(1)]))  # one process seeing the global batch
    torch.testing.assert_close(r0["bias"], reference.bias.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r0["log_scale"], reference.log_scale.detach(), rtol=1e-4, atol=1e-4)
