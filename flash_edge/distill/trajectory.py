"""Stage 1: trajectory-guided pre-training of the few-step student on the teacher's ODE.

The teacher (with CFG) is integrated from each starting noise through the student's own sigmas, with
``substeps`` Euler steps between two student sigmas; the points it passes at the student's sigmas are the
ODE pairs. The student learns, at each of its steps, the one Euler jump that joins two consecutive points:
v_target = (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i), so its own 2- or 4-step Euler run retraces the
teacher's trajectory (guidance distilled in: the student runs without CFG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import SINGLE, Dist, optimizer_step
from .flow import Velocity, euler, model_velocity
from .models import Family


def refine(sigmas: torch.Tensor, substeps: int) -> torch.Tensor:
    """``sigmas`` with ``substeps - 1`` evenly spaced sigmas inserted in each interval (student sigmas kept)."""
    parts = [torch.linspace(float(sigmas[i]), float(sigmas[i + 1]), substeps + 1)[:-1] for i in range(len(sigmas) - 1)]
    return torch.cat(parts + [sigmas[-1:]]).to(sigmas.dtype)


@torch.no_grad()
def teacher_trajectory(velocity: Velocity, noise: torch.Tensor, student_sigmas: torch.Tensor, substeps: int = 10) -> torch.Tensor:
    """The teacher's ODE points at the student's sigmas: (B, steps + 1, C, H, W), point 0 = the noise."""
    fine = refine(student_sigmas, substeps)
    return euler(velocity, noise, fine, keep=True)[:, ::substeps]


@torch.no_grad()
def make_ode_pairs(family: Family, teacher, prompts: list[str], noise: torch.Tensor, student_sigmas: torch.Tensor,
                   guidance: float = 4.0, substeps: int = 10, chunk: int = 64) -> torch.Tensor:
    """Teacher trajectories for (prompt, noise) pairs, in chunks: (N, steps + 1, C, H, W)."""
    out = []
    for i in range(0, len(prompts), chunk):
        ps = prompts[i:i + chunk]
        cond, uncond = family.encode(ps), family.encode([""] * len(ps))
        v = model_velocity(family, teacher, cond, uncond, guidance)
        out.append(teacher_trajectory(v, noise[i:i + chunk], student_sigmas, substeps))
    return torch.cat(out)


def trajectory_loss(family: Family, student, points: torch.Tensor, cond, step: torch.Tensor,
                    student_sigmas: torch.Tensor) -> torch.Tensor:
    """MSE between the student's velocity at its step ``step[b]`` and the jump joining the teacher's points."""
    b = torch.arange(points.shape[0])
    s0, s1 = student_sigmas[step], student_sigmas[step + 1]
    x0, x1 = points[b, step], points[b, step + 1]
    target = (x1 - x0) / (s1 - s0).reshape(-1, 1, 1, 1)
    return F.mse_loss(family.velocity(student, x0, s0, cond), target)


def draw_steps(g: torch.Generator, batch: int, n_data: int, steps: list[int]) -> dict:
    """One global batch: which pairs, and which of the allowed student steps each is trained at."""
    allowed = torch.as_tensor(steps)
    return {"idx": torch.randint(n_data, (batch,), generator=g),
            "step": allowed[torch.randint(len(allowed), (batch,), generator=g)]}


def trajectory_step(family: Family, student, points: torch.Tensor, prompts: list[str], batch: dict,
                    student_sigmas: torch.Tensor, params, opt, ctx: Dist = SINGLE) -> float:
    idx = ctx.shard(batch["idx"])
    with torch.no_grad():
        cond = family.encode([prompts[i] for i in idx.tolist()])
    dev = points.device
    loss = trajectory_loss(family, student, points[idx.to(dev)], cond, ctx.shard(batch["step"]).to(dev),
                           student_sigmas.to(dev))
    return optimizer_step(loss, params, opt, ctx)


def train_trajectory(family: Family, student, points: torch.Tensor, prompts: list[str], student_sigmas: torch.Tensor,
                     iters: int, batch: int = 32, lr: float = 1e-4, seed: int = 0, ctx: Dist = SINGLE,
                     steps: list[int] | None = None, log=None) -> list[float]:
    """Train ``student`` on ODE pairs ``points`` (from :func:`make_ode_pairs`) at ``steps`` (default: all)."""
    steps = list(range(len(student_sigmas) - 1)) if steps is None else steps
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for it in range(iters):
        b = draw_steps(g, batch, len(points), steps)
        losses.append(trajectory_step(family, student, points, prompts, b, student_sigmas, params, opt, ctx))
        if log:
            log(it, {"trajectory_loss": losses[-1]})
    student.eval()
    return losses
