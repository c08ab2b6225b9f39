"""Worker processes for tests/test_distill_distributed.py (a plain module so spawned children can import it)."""

from __future__ import annotations

import os

import torch

GLOBAL_BATCH, STEPS, LR = 8, 3, 0.1


def setup(seed: int = 0):
    from flash_edge.distill.dataset import ShapesDataset
    from flash_edge.distill.models import Family, tiny_test_config
    from flash_edge.distill.teacher import teacher_params

    family = Family.build(tiny_test_config(32), seed=seed)
    latents = torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    prompts = ShapesDataset(8, seed=0, size=32).arrays()[1]
    params = teacher_params(family)
    return family, latents, prompts, params


def run_steps(ctx, family, latents, prompts, params) -> dict:
    """STEPS teacher steps on the global batches of a seeded generator; the averaged gradients of the first
    step and the final weights."""
    from flash_edge.distill.teacher import draw_batch, teacher_step

    opt = torch.optim.SGD(params, lr=LR)
    g = torch.Generator().manual_seed(0)
    out = {}
    for step in range(STEPS):
        b = draw_batch(g, len(latents), GLOBAL_BATCH, tuple(latents.shape[1:]), dropout=0.25)
        out.setdefault("losses", []).append(teacher_step(family, latents, prompts, b, params, opt, ctx))
        if step == 0:
            out["grads"] = [p.grad.detach().clone() for p in params]
    out["weights"] = [p.detach().clone() for p in params]
    return out


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    from flash_edge.distill.distributed import Dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = Dist.from_env("cpu")
    family, latents, prompts, params = setup(seed=rank)  # different starting weights on purpose...
    ctx.broadcast(family.transformer, family.text_encoder, family.text_encoder_2)  # ...made equal by rank 0's
    out = run_steps(ctx, family, latents, prompts, params)
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()
