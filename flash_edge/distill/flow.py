"""Rectified-flow pieces every stage shares (torch): noising, training noise levels, schedules, Euler sampling.

Same conventions as ``flash_edge.sampler``: x_sigma = (1 - sigma) x0 + sigma noise, velocity v = noise - x0,
timestep = 1000 sigma; ``schedule`` is the SDK sampler's ``flow_sigmas`` (SD3's shift), at any step count.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..sampler import flow_sigmas

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma (B,)) -> v


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def x0_from(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x - sigma.reshape(-1, *([1] * (x.dim() - 1))) * v


def training_sigmas(n: int, generator: torch.Generator | None = None, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """SD3's logit-normal noise levels for the flow-matching loss."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def schedule(steps: int, shift: float = 3.0) -> torch.Tensor:
    """``steps + 1`` float32 sigmas ending at 0: the SDK sampler's own schedule (``flash_edge.sampler.flow_sigmas``,
    as diffusers' ``FlowMatchEulerDiscreteScheduler`` makes it), as a tensor; any step count (a teacher's 40 too)."""
    return torch.from_numpy(flow_sigmas(steps, shift))


def euler(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, keep: bool = False):
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]``; returns the end point, or every point if ``keep``."""
    points = [x]
    for i in range(len(sigmas) - 1):
        s = sigmas[i].expand(x.shape[0])
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, s)
        points.append(x)
    return torch.stack(points, dim=1) if keep else x


def guided(velocity_cond: Velocity, velocity_uncond: Velocity | None, scale: float) -> Velocity:
    """Classifier-free guidance: v_u + scale (v_c - v_u); ``scale <= 1`` or no uncond: v_c alone."""
    if velocity_uncond is None or scale <= 1.0:
        return velocity_cond
    return lambda x, s: (lambda vu: vu + scale * (velocity_cond(x, s) - vu))(velocity_uncond(x, s))


def model_velocity(family, transformer, cond, uncond=None, guidance: float = 1.0) -> Velocity:
    """A transformer + prompt conditioning (+ the empty prompt's, for CFG) -> a velocity function."""
    vc = lambda x, s: family.velocity(transformer, x, s, cond)  # noqa: E731
    vu = None if uncond is None else (lambda x, s: family.velocity(transformer, x, s, uncond))  # noqa: E731
    return guided(vc, vu, guidance)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """The SDK's per-seed starting latents (``flash_edge.sampler.gaussian_noise``), one per seed."""
    from ..sampler import gaussian_noise

    return torch.from_numpy(np.concatenate([gaussian_noise(int(s), (1, *shape)) for s in seeds]))


@torch.no_grad()
def generate(family, transformer, prompts: list[str], seeds: list[int], steps: int, guidance: float = 1.0,
             sigmas: torch.Tensor | None = None, batch: int = 32) -> np.ndarray:
    """Pictures (N, H, W, 3) uint8 from a transformer with the family's VAE and text encoders (Euler, CFG)."""
    sigmas = schedule(steps, family.config.shift) if sigmas is None else sigmas
    c, n = 16, family.config.latent_size
    out = []
    for i in range(0, len(prompts), batch):
        ps, ss = prompts[i:i + batch], seeds[i:i + batch]
        cond = family.encode(ps)
        uncond = family.encode([""] * len(ps)) if guidance > 1.0 else None
        x0 = initial_noise(ss, (c, n, n)).to(family.device)
        x = euler(model_velocity(family, transformer, cond, uncond, guidance), x0, sigmas.to(family.device))
        img = family.to_images(x)
        out.append((img.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)
