"""The Core ML export's quality sweep: the gate image's PSNR at every palettized bit width (w8/w6/w4), so a
bundle's manifest says what the other precisions would have cost. Linux has no Core ML runtime: each width runs
as PyTorch with the palettized weights in fp16, as the Linux parity gate does (``CoreMLExporter``)."""

from __future__ import annotations

from .coreml_palettize import BITS, Policy

SWEEP_MAX_PARAMS = 20_000_000  # --quality-sweep auto: measure w8/w6/w4 when the palettized weights are this small


def sweep_wanted(exporter) -> bool:
    """Whether the exporter's ``--quality-sweep`` (``auto``: palettized models this small) asks for it."""
    if exporter.sweep != "auto":
        return exporter.sweep == "on"
    if exporter.precision == "fp16" or not exporter.parts:
        return False
    size = sum(len(Policy("w8", exporter.policy.grouped).chosen(c, piece))
               and sum(p.numel() for p in piece.parameters())
               for c, parts in exporter.parts.items() for piece, *_ in parts)
    return size <= SWEEP_MAX_PARAMS


def quality_sweep(exporter) -> dict:
    """Image PSNR (and each component's) vs the fp32 reference for every palettized precision, with this
    bundle's deployment target and policy, measured the same way as the Linux gate."""
    from ..pipeline import FlashPipeline
    from ..runtimes.torch import reference_sessions
    from .parity import GATE_PROMPT, GATE_SEED, compare_components
    from ..metrics import psnr

    out = {}
    reference = None
    for prec in BITS:
        policy = Policy(prec, exporter.policy.grouped)
        weights = {c: [policy.weights(fp16, c, piece) for piece, _, fp16, _ in parts]
                   for c, parts in exporter.parts.items()}
        cand = exporter.torch_pipeline(exporter.root, weights, "torch")
        if reference is None:
            sessions = reference_sessions(exporter.wrappers, exporter.specs)
            reference = FlashPipeline(cand.spec, sessions, cand.tokenizers)
            ref_img = reference.generate(GATE_PROMPT, seed=GATE_SEED)
        comps = compare_components(reference, cand, exporter.specs)
        img = cand.generate(GATE_PROMPT, seed=GATE_SEED)
        out[prec] = {"image_psnr_db": round(psnr(ref_img, img, data_range=1.0), 2),
                     **{f"{c}_psnr_db": round(r["psnr_db"], 2) for c, r in comps.items()}}
    return out
