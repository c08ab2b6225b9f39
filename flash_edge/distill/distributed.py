"""One training loop for one process or many (``torch.distributed``: gloo on CPU, NCCL on GPUs).

Every rank draws the same global batch from the same seeded generator and keeps its own contiguous shard;
after ``backward`` the gradients are averaged across ranks (all-reduce / world size). Losses are means over
the batch, so with equal shards the averaged gradient equals the single-process gradient on the whole batch,
and ranks that start from the same weights (``broadcast``) stay in sync step after step.

Run multi-process with ``torchrun --nproc_per_node N -m flash_edge.distill ...`` (reads RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT from the environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | None = None) -> "Dist":
        """Join the process group torchrun (or a test) set up through the environment; single-process if none."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if world <= 1:
            return cls(device=dev)
        rank = int(os.environ["RANK"])
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        return cls(rank=rank, world=world, device=dev)

    def shard(self, x):
        """This rank's contiguous share of a global batch (tensor, or list such as prompts)."""
        if not self.active:
            return x
        n = len(x)
        if n % self.world:
            raise ValueError(f"global batch {n} does not split over {self.world} processes")
        k = n // self.world
        return x[self.rank * k:(self.rank + 1) * k]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(self.world)

    def broadcast(self, *modules: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.active:
            return
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, src=0)

    def mean(self, value: float) -> float:
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world


SINGLE = Dist()


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, ctx: Dist = SINGLE,
                   clip: float | None = 1.0) -> float:
    """zero_grad -> backward into ``params`` only -> average across ranks -> clip -> step; returns the loss
    averaged over ranks (the global batch's loss)."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    ctx.average_gradients(params)
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return ctx.mean(loss.detach().item())
