"""Export-friendly torch modules, one per component, that honour the ``ComponentSpec`` contract:
positional inputs in the spec's order, a tuple of outputs in the spec's order, float32 in and out.

Every exporter traces these, the torch backend runs these, and the reference pipeline is built from
these, so "the model" means the same computation on every path.
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import COMPONENTS


class _Wrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


class ClipTextEncoder(_Wrapper):
    """input_ids -> (penultimate hidden states, pooled projection), as SD3 uses CLIP (clip_skip=None)."""

    def forward(self, input_ids):
        out = self.model(input_ids, output_hidden_states=True)
        return out.hidden_states[-2].float(), out.text_embeds.float()


class T5TextEncoder(_Wrapper):
    def forward(self, input_ids):
        return (self.model(input_ids)[0].float(),)


class Transformer(_Wrapper):
    context_tokens: int | None = None  # set by ``folding.folded``: read only the first N context tokens

    def forward(self, latent, timestep, encoder_hidden_states, pooled_projections):
        dt = self.dtype
        if self.context_tokens is not None:
            encoder_hidden_states = encoder_hidden_states[:, :self.context_tokens]
        v = self.model(hidden_states=latent.to(dt), timestep=timestep.to(dt),
                       encoder_hidden_states=encoder_hidden_states.to(dt),
                       pooled_projections=pooled_projections.to(dt), return_dict=False)[0]
        return (v.float(),)


class VaeDecoder(_Wrapper):
    """Latent -> image in [0, 1], with the VAE's scaling and shift folded in (as the SD3 pipeline does)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.scaling_factor = float(model.config.scaling_factor)
        self.shift_factor = float(model.config.shift_factor or 0.0)

    def forward(self, latent):
        z = latent.to(self.dtype) / self.scaling_factor + self.shift_factor
        image = self.model.decode(z, return_dict=False)[0]
        return ((image.float() / 2 + 0.5).clamp(0, 1),)


WRAPPERS = {"text_encoder": ClipTextEncoder, "text_encoder_2": ClipTextEncoder, "text_encoder_3": T5TextEncoder,
            "transformer": Transformer, "vae_decoder": VaeDecoder}


def wrap(component: str, module: nn.Module) -> nn.Module:
    return WRAPPERS[component](module).eval()


def build_wrappers(model, components) -> dict[str, nn.Module]:
    """Wrap the loaded ``SD3Model``'s modules for the given component names."""
    return {c: wrap(c, getattr(model, COMPONENTS[c].part)) for c in components}
