"""Decoder fine-tuning on a trained model (``python -m flash_edge.distill decoder``): what the decoder alone
changes, scored on the same held-out prompts, seeds and pictures as the distillation table.

    python -m benchmarks.decoder_finetune --folder LABEL=DIR [--folder LABEL=DIR ...] [--n 100]

Per folder (a trained model folder: the shipped ``tiny`` or a ``decoder`` output): mini-GenEval of the VAE's
reconstructions of 200 held-out dataset pictures (the ceiling any model decoding with that VAE has), PSNR of
those reconstructions, the 4-step student's mini-GenEval on ``--n`` held-out prompts (seeds 0..n-1), and the
artefact score of those pictures (``flash_edge/eval/artefacts.py``). Writes
``benchmarks/results/decoder-finetune.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def measure(folder: Path, n: int) -> dict:
    import torch

    from flash_edge.distill.dataset import ShapesDataset
    from flash_edge.distill.evaluate import EVAL_SEED, evaluate
    from flash_edge.distill.models import Family
    from flash_edge.eval.artefacts import artefact_score
    from flash_edge.eval.geneval import score
    from flash_edge.metrics import psnr

    family = Family.load(folder)
    steps = json.loads((folder / "flash_edge.json").read_text()).get("steps", 4) if (folder / "flash_edge.json").is_file() else 4
    x, prompts = ShapesDataset(200, seed=EVAL_SEED, size=family.config.size).arrays()
    with torch.no_grad():
        rec = torch.cat([family.to_images(family.to_latents(torch.from_numpy(x[i:i + 50]))) for i in range(0, 200, 50)])
    rec8 = (rec.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    real8 = ((x.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    student, images, _ = evaluate(family, family.transformer, steps, n=n)
    return {"folder": str(folder), "steps": steps,
            "vae_reconstruction": {"geneval": score(list(rec8), prompts).as_dict(),
                                   "psnr_db": psnr(real8.astype(np.float64), rec8.astype(np.float64), data_range=255.0),
                                   "artefacts": artefact_score(list(rec8))},
            "dataset_pictures_artefacts": artefact_score(list(real8)),
            "student": student.as_dict(), "artefacts": artefact_score(images)}


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| model | VAE reconstructions: mini-GenEval (200 pictures) | reconstruction PSNR dB | student overall | "
             "colour | shape | position | count | two-object | artefacts ring / far | flagged | reconstructions' artefacts ring / far |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, a = r["student"], r["artefacts"]
        lines.append(f"| {r['label']} | {r['vae_reconstruction']['geneval']['overall']:.3f} | "
                     f"{r['vae_reconstruction']['psnr_db']:.2f} | {s['overall']:.2f} | {s['colour']:.2f} | "
                     f"{s['shape']:.2f} | {s['position']:.2f} | {s['count']:.2f} | {s['two-object']:.2f} | "
                     f"{a['ring']:.1f} / {a['far']:.1f} | {'yes' if a['flagged'] else 'no'} | "
                     f"{r['vae_reconstruction']['artefacts']['ring']:.1f} / {r['vae_reconstruction']['artefacts']['far']:.1f} |")
    d = rows[0]["dataset_pictures_artefacts"]
    lines += ["", f"The 200 dataset pictures themselves: artefacts ring / far {d['ring']:.2f} / {d['far']:.2f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.decoder_finetune", description=__doc__.splitlines()[0])
    ap.add_argument("--folder", action="append", required=True, help="LABEL=DIR")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS / "decoder-finetune")
    ap.add_argument("--curve", type=Path, help="a JSON-lines log of a decoder run's checkpoints (decoder_steps, "
                    "recon, student_4step), quoted in the table's notes")
    a = ap.parse_args(argv)
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    rows = []
    for item in a.folder:
        label, _, folder = item.partition("=")
        rows.append({"label": label, **measure(Path(folder), a.n)})
        print(json.dumps(rows[-1]), flush=True)
    command = "python -m benchmarks.decoder_finetune " + " ".join(argv if argv is not None else sys.argv[1:])
    curve = [json.loads(line) for line in a.curve.read_text().splitlines()] if a.curve else []
    a.out.with_suffix(".json").write_text(json.dumps({"command": command, "n": a.n, "rows": rows, "curve": curve},
                                                     indent=1) + "\n")
    text = markdown(rows, command)
    if curve:
        text += ("\nThe decoder run's checkpoints (" + str(a.curve.name) + ": one thread, seed 7, batch 32, AdamW 3e-4; "
                 "student = the 4-step student's mini-GenEval on the same 100 prompts):\n\n"
                 "| decoder steps | reconstructions mini-GenEval | reconstruction PSNR dB | student overall |\n"
                 "|---|---|---|---|\n"
                 + "".join(f"| {c['decoder_steps']} | {c['recon']['overall']:.3f} | {c['recon_psnr']:.2f} | "
                           f"{c['student_4step']['overall']:.2f} |\n" for c in curve))
    a.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
