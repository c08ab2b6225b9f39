"""Stage 3: split-timestep fine-tuning, then a merge by weight interpolation.

The student is copied twice; one copy is fine-tuned only at its steps with timestep in (0, 500], the
other only at its steps in (500, 1000]. After every update each copy is pulled back towards the starting
weights (the EMA anchor: w <- (1 - rate) w + rate w_start), so the two stay close enough to average.
The merge is w = ratio * w_low + (1 - ratio) * w_high, parameter by parameter (the paper reports 3:7), with
the ratio picked on a metric (mini-GenEval) by :func:`choose_ratio`.

The fine-tuning objective is a callable ``loss(model, steps, iteration) -> loss``: the CLI passes stage 1's
trajectory loss restricted to the copy's steps.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from .distributed import SINGLE, Dist, optimizer_step

StepLoss = Callable[[torch.nn.Module, list[int], int], torch.Tensor]
BOUNDARY = 500.0  # timestep splitting the two ranges


def split_steps(sigmas: torch.Tensor, boundary: float = BOUNDARY) -> tuple[list[int], list[int]]:
    """The student's step indices with timestep (1000 sigma) in (0, boundary] and in (boundary, 1000]."""
    t = (sigmas[:-1] * 1000.0).tolist()
    return [i for i, v in enumerate(t) if 0 < v <= boundary], [i for i, v in enumerate(t) if v > boundary]


@torch.no_grad()
def anchor(model: torch.nn.Module, start: dict[str, torch.Tensor], rate: float) -> None:
    """Pull ``model``'s parameters towards ``start``: w <- (1 - rate) w + rate w_start."""
    for name, p in model.named_parameters():
        p.lerp_(start[name], rate)


def finetune_copy(student: torch.nn.Module, steps: list[int], loss_fn: StepLoss, iters: int, lr: float = 1e-5,
                  anchor_rate: float = 0.01, ctx: Dist = SINGLE, log=None) -> torch.nn.Module:
    """A fine-tuned copy of ``student`` that only ever trains at ``steps`` (the original is untouched)."""
    if not steps:
        return copy.deepcopy(student)
    model = copy.deepcopy(student).train()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for it in range(iters):
        value = optimizer_step(loss_fn(model, steps, it), params, opt, ctx)
        anchor(model, start, anchor_rate)
        if log:
            log(it, {"split_loss": value, "steps": steps})
    return model.eval()


@torch.no_grad()
def merge(low: torch.nn.Module, high: torch.nn.Module, ratio: float) -> torch.nn.Module:
    """A new model with w = ratio * w_low + (1 - ratio) * w_high (buffers from ``low``)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"merge ratio must be in [0, 1], got {ratio}")
    merged = copy.deepcopy(low)
    hp = dict(high.named_parameters())
    for name, p in merged.named_parameters():
        p.copy_(ratio * p + (1.0 - ratio) * hp[name])
    return merged


def choose_ratio(low, high, ratios, evaluate: Callable[[torch.nn.Module], float]) -> tuple[float, dict[float, float]]:
    """The ratio whose merged model scores best under ``evaluate`` (e.g. mini-GenEval overall), and all scores."""
    scores = {float(r): float(evaluate(merge(low, high, r))) for r in ratios}
    return max(scores, key=scores.get), scores


def split_finetune(student, sigmas: torch.Tensor, loss_fn: StepLoss, iters: int, lr: float = 1e-5,
                   anchor_rate: float = 0.01, ctx: Dist = SINGLE, log=None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(low copy, high copy): each fine-tuned on its own timestep range."""
    low_steps, high_steps = split_steps(sigmas)
    low = finetune_copy(student, low_steps, loss_fn, iters, lr, anchor_rate, ctx, log)
    high = finetune_copy(student, high_steps, loss_fn, iters, lr, anchor_rate, ctx, log)
    return low, high
