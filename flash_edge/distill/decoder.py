"""Fine-tuning a trained model's VAE decoder alone, on the dataset's pictures: the latent space (encoder, scaling,
shift) stays as it is, so the transformer that was trained in it keeps working, and every picture it draws is
decoded better.

Why: the recipe's VAE stage (1200 steps in the shipped run) left a decoder whose reconstructions of real dataset
pictures score 0.485 on mini-GenEval (200 held-out images), which caps every model built on it. 250 steps of this
stage lift that to 0.74 and the shipped 4-step student from 0.08 to 0.15, with no transformer training
(``benchmarks/results/decoder-finetune.md``).

Each step: a batch of dataset pictures, latents sampled from the frozen encoder's posterior (mean + std * noise:
the decoder learns to read the neighbourhood of each latent, where a student's outputs land), decoded, and the
VAE stage's reconstruction loss (MSE + 0.5 L1 on [-1, 1] pixels).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .models import Family

Log = Callable[[int, dict], None]


@torch.no_grad()
def posteriors(family: Family, images: torch.Tensor, chunk: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder's posterior (mean, std) per picture; ``images`` float (N, 3, H, W) in [-1, 1]."""
    post = [family.vae.encode(images[i:i + chunk]).latent_dist for i in range(0, len(images), chunk)]
    return torch.cat([p.mean for p in post]), torch.cat([p.std for p in post])


def finetune_decoder(family: Family, images: torch.Tensor, steps: int, batch: int = 32, lr: float = 3e-4,
                     seed: int = 7, log: Log | None = None, every: int = 0,
                     on_checkpoint: Callable[[int], None] | None = None) -> list[float]:
    """Train ``family.vae.decoder`` only, ``steps`` AdamW steps; returns the per-step losses. The encoder's
    weights and the VAE's scaling/shift are not touched. ``on_checkpoint(step)`` runs every ``every`` steps."""
    vae = family.vae
    mean, std = posteriors(family, images)
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(1, steps + 1):
        vae.decoder.train()
        idx = torch.randint(len(images), (batch,), generator=g)
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, images[idx]) + 0.5 * F.l1_loss(rec, images[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if log:
            log(step, {"decoder_loss": losses[-1]})
        if on_checkpoint and every and step % every == 0:
            vae.eval()
            on_checkpoint(step)
    vae.eval()
    for p in params:
        p.requires_grad_(False)
    return losses
