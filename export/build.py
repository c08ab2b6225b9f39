"""``export_bundle``: model -> specs -> one artifact per component -> parity gate -> atomic bundle."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..atomic import atomic_directory, check_output_path, ensure_apart
from ..bundle import write_manifest
from ..errors import ExportError
from ..quiet import quiet
from ..sampler import check_steps
from ..versions import package_versions, python_version
from .mixed import component_exporters, distinct, other_exporters, parse_component_targets
from .parity import run_gate

Progress = Callable[[str], None]


def _write_tokenizers(model, spec, root: Path) -> None:
    for comp, tok_spec in spec.tokenizers.items():
        dest = root / tok_spec.path
        model.tokenizer(comp).save_pretrained(str(dest))
        src = model.tokenizer_dirs[comp]
        for name in ("vocab.json", "merges.txt", "spiece.model"):  # what Swift/Kotlin tokenizers read (data only)
            if (src / name).is_file() and not (src / name).is_symlink() and not (dest / name).exists():
                shutil.copyfile(src / name, dest / name)
        if not (dest / "tokenizer.json").is_file():
            raise ExportError(f"the tokenizer of {src} could not be saved as tokenizer.json (the runtime needs it)")
        for junk in ("chat_template.jinja",):
            (dest / junk).unlink(missing_ok=True)


def export_bundle(source: str | Path, target: str, out: str | Path, precision: str | None = None, *,
                  height: int | None = None, width: int | None = None, steps: int | None = None, rule: str = "euler",
                  sigmas=None, t5: bool = False, t5_tokens: int | None = None, force: bool = False,
                  skip_parity: bool = False, progress: Progress | None = None, config=None,
                  decode_tile: int | None = None, decode_overlap: int | None = None,
                  component_targets: dict[str, str] | None = None, fold_slots: bool = True, **target_options) -> Path:
    """Export ``source`` (``"tiny"``, a diffusers folder or a single-file ``.safetensors`` checkpoint, whose
    diffusers config folder is ``config``) to a ``target`` bundle at ``out``. ``decode_tile``/``decode_overlap``
    (pixels): export the VAE decoder at a tile's shape and decode in overlapping tiles (``flash_edge.tiling``).
    ``component_targets``: components exported for another target, ``{"vae_decoder": "onnx:fp32"}``
    (``mixed.py``). ``fold_slots``: run T5's zero slots as one weighted token in the transformer
    (``flash_edge.folding``; exact, and the default where the layout has them)."""
    from ..components import build_wrappers
    from ..folding import folded, zero_slots
    from ..models import load_model
    from ..models.loading import source_paths
    from ..models.generation import generation_spec, warn_out_of_range
    from ..pipeline import FlashPipeline
    from . import get_exporter

    say = progress or (lambda msg: None)
    exporter = get_exporter(target, precision, **target_options)  # bad target/precision fail before any work
    others = other_exporters(exporter, parse_component_targets(component_targets))
    if steps is not None:
        check_steps(steps)  # a bundle is a few-step sampler (1..MAX_STEPS); fail before loading anything
    out = check_output_path(out, force)
    ensure_apart(out, source_paths(source, config))
    with atomic_directory(out, force) as tmp:  # holds --out's lock from here: a second writer fails at once
        say(f"loading model {source}")
        model = load_model(source, t5=t5, config=config)
        spec = generation_spec(model, height, width, steps=steps, rule=rule, sigmas=sigmas,
                               t5_tokens=t5_tokens, decode_tile=decode_tile, decode_overlap=decode_overlap)
        check_steps(spec.sampler.steps)  # explicit --sigmas, or the model's own default
        warnings = warn_out_of_range(model, spec)  # kept in the manifest too: an app sees what it was given
        specs = spec.component_specs()
        exporters = component_exporters(exporter, others, spec.components)
        wrappers = build_wrappers(model, spec.components)
        _write_tokenizers(model, spec, tmp)
        entries = {}
        for i, (name, own) in enumerate(exporters.items(), 1):
            say(f"[{i}/{len(specs)}] {name}: exporting to {own.target} {own.precision}")
            fold = zero_slots(spec.text) if fold_slots and own.folds and name == "transformer" else None
            # quiet: the exporters' own logs and warnings (FLASH_EDGE_LIBRARY_LOGS=1 shows them)
            with quiet(native=True), folded(wrappers[name], fold, spec.latent.tokens):
                artifact = own.export_component(name, wrappers[name], specs[name], tmp)
            if fold:
                artifact.options["folded_t5_slots"] = fold.manifest()
            entries[name] = artifact.entry(own.target, specs[name])
        used = distinct(exporter, exporters)
        provenance = {
            "model": {"name": model.name, "source": str(model.path),
                      "transformer": dict(model.transformer.config),
                      "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in model.modules().items()}},
            "target": target, "precision": exporter.precision,
            **({"component_targets": {n: {"target": e.target, "precision": e.precision} for n, e in others.items()}}
               if others else {}),
            "tools": {**package_versions(["torch", "diffusers", "transformers", "numpy", "tokenizers"]),
                      **package_versions([p for e in used for p in e.packages]), "python": python_version()},
        }
        write_manifest(tmp, spec, entries, hash_files=False, **provenance)
        if skip_parity:
            parity = {"status": "skipped"}
            warnings.append("PARITY GATE SKIPPED (--skip-parity): this bundle was not checked against the "
                            "PyTorch reference and may produce wrong images")
        else:
            say("parity gate: comparing with the PyTorch reference")
            reference = FlashPipeline.reference(model, spec, wrappers)
            with quiet(native=True):
                parity = run_gate(exporter, reference, tmp, specs, exporters)
            if spec.decode.tiled:
                parity["decode_tiling"] = tiling_error(model, spec, reference, wrappers, reference.last_latent)
            if parity["status"] == "not run":
                warnings.append(f"parity gate not run here: {parity['reason']}")
        extras = {}
        for own in used:
            if own.extra_phase():
                say(own.extra_phase())
            with quiet(native=True):
                extras[own.target] = own.manifest_extra()
        say("writing manifest (hashing files)")
        write_manifest(tmp, spec, entries, **provenance, **{t: x for t, x in extras.items() if x}, parity=parity,
                       warnings=warnings)
    say(f"wrote {out}")
    return out


def tiling_error(model, spec, reference, wrappers, latent) -> dict:
    """What tiling alone costs: the PyTorch reference's gate latent (``latent``, kept from the gate's own run:
    no second denoise) decoded in tiles vs in one pass."""
    from dataclasses import replace

    from ..metrics import psnr
    from ..pipeline import FlashPipeline
    from ..spec import DecodeSpec

    whole = FlashPipeline.reference(model, replace(spec, decode=DecodeSpec()), wrappers)
    return {"psnr_db": psnr(whole.decode(latent), reference.decode(latent), data_range=1.0),
            "vs": "the PyTorch reference decoding the same latent in one pass", "tile": spec.decode.tile,
            "overlap": spec.decode.overlap}
