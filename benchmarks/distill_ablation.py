"""The distillation results table: mini-GenEval of the teacher and the students, and what timestep sharing
and the split merge do to it.

    python benchmarks/distill_ablation.py --run out/distill [--n 200] [--guidance 4]

Reads the folders ``python -m flash_edge.distill train`` wrote under ``--run`` (teacher, and for each student
step count k the stages ``student-{k}step-trajectory``, ``-dmd``, ``-dmd-random``, ``-split``; missing ones
are listed as missing, not guessed) and scores each on the same held-out prompts and seeds: mini-GenEval, the
artefact score (``flash_edge.eval.artefacts``: background deviation in the ring around the shapes / far from
them, flagged above its thresholds) and, for the DMD students, the DMD gradient's relative variance that
training measured under both timestep rules (``{folder}-gradient-variance.json``). Writes
``benchmarks/results/distill-ablation.{json,md}`` (with this command line) and a prompts x models grid PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
GRID_PROMPTS = ["a red circle on the left", "a blue square above a yellow triangle", "two green diamonds",
                "an orange triangle to the right of a purple circle", "a yellow square in the center",
                "three blue circles"]
STUDENT_STAGES = (("trajectory", "stage 1 only"), ("dmd-random", "+ DMD, random timesteps"),
                  ("dmd", "+ DMD, timestep sharing"), ("split", "+ split-timestep merge"))


def rows_for(run: Path, guidance: float) -> list[dict]:
    """What to score: (label, folder, steps, guidance)."""
    rows = [dict(model="teacher", variant=f"40 steps, CFG {guidance:g}", folder="teacher", steps=40, guidance=guidance),
            dict(model="teacher", variant=f"4 steps, CFG {guidance:g}", folder="teacher", steps=4, guidance=guidance),
            dict(model="teacher", variant=f"2 steps, CFG {guidance:g}", folder="teacher", steps=2, guidance=guidance)]
    for k in (4, 2):
        for stage, label in STUDENT_STAGES:
            rows.append(dict(model=f"student {k}-step", variant=label, folder=f"student-{k}step-{stage}", steps=k,
                             guidance=1.0))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from flash_edge.distill.cli import _quiet
    from flash_edge.distill.evaluate import evaluate
    from flash_edge.distill.flow import generate
    from flash_edge.distill.models import Family
    from flash_edge.eval.artefacts import artefact_score

    _quiet()
    results, grid_rows, loaded = [], [], {}
    for row in rows_for(a.run, a.guidance):
        folder = a.run / row["folder"]
        if not (folder / "family.json").is_file():
            results.append({**row, "missing": True})
            continue
        if row["folder"] not in loaded:
            loaded[row["folder"]] = Family.load(folder)
        fam = loaded[row["folder"]]
        t0 = time.perf_counter()
        s, images, _ = evaluate(fam, fam.transformer, row["steps"], row["guidance"], a.n)
        results.append({**row, **s.as_dict(), "artefacts": artefact_score(images),
                        **gradient_variance(a.run, row["folder"]), "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(results[-1]), flush=True)
        grid_rows.append((f"{row['model']}, {row['variant']}",
                          generate(fam, fam.transformer, GRID_PROMPTS, list(range(len(GRID_PROMPTS))), row["steps"],
                                   row["guidance"])))

    a.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/distill_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (a.out / "distill-ablation.json").write_text(json.dumps({"command": command, "rows": results}, indent=1) + "\n")
    cats = ("overall", "colour", "shape", "position", "count", "two-object")
    lines = [f"Command: `{command}` (mini-GenEval, {a.n} held-out prompts, seeds 0..{a.n - 1})", "",
             "| model | variant | steps | " + " | ".join(cats) + " | artefacts ring / far | DMD gradient relative "
             "variance: this rule (other rule), start / middle / end |", "|---|---|---|" + "---|" * (len(cats) + 2)]
    for r in results:
        if r.get("missing"):
            vals = ["missing"] * (len(cats) + 2)
        else:
            art = r["artefacts"]
            vals = [f"{r.get(c, float('nan')):.3f}" for c in cats] + [
                f"{art['ring']:.1f} / {art['far']:.1f}" + (" **flagged**" if art["flagged"] else ""),
                variance_cell(r.get("gradient_variance"), r["folder"])]
        lines.append(f"| {r['model']} | {r['variant']} | {r['steps']} | " + " | ".join(vals) + " |")
    lines += ["", "Artefacts: mean RGB distance from the background in a 1-5 px ring around the shapes / beyond it "
              "(flagged above 15 / 10). Gradient variance: E||g - mean g||^2 / ||mean g||^2 of the DMD term's "
              "gradient on the student's weights over independent batches at the same weights, measured under "
              "both rules on the same batches (equal compute) at the start, middle and end of that run's DMD; "
              "lower is a steadier gradient; over M batches it lies in [0, M - 1], M - 1 meaning the batches' "
              "gradients share no direction."]
    (a.out / "distill-ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if grid_rows:
        labelled_grid(grid_rows, GRID_PROMPTS).save(a.out / "distill-grid.png")
    return 0


def gradient_variance(run: Path, folder: str) -> dict:
    """What DMD training measured for ``folder`` (``{folder}-gradient-variance.json``), if it did."""
    path = run / f"{folder}-gradient-variance.json"
    return {"gradient_variance": json.loads(path.read_text())} if path.is_file() else {}


def variance_cell(measured: list | None, folder: str) -> str:
    if not measured:
        return ""
    own, other = ("random", "sharing") if folder.endswith("-random") else ("sharing", "random")
    fmt = lambda rule: " / ".join(f"{m[rule]['relative']:.2f}" if rule in m else "-" for m in measured)  # noqa: E731
    return f"{own} {fmt(own)} ({other} {fmt(other)})"


def labelled_grid(rows: list[tuple[str, np.ndarray]], prompts: list[str], scale: int = 2):
    """Models down, prompts across: each picture (H, W, 3) uint8 upscaled ``scale``x (nearest), row labels on the
    left, prompts (wrapped) on top; PIL's built-in font, so nothing is fetched."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    h, w = rows[0][1].shape[1:3]
    cell_h, cell_w, label_w, head_h, pad = h * scale, w * scale, 230, 48, 4
    grid = Image.new("RGB", (label_w + len(prompts) * (cell_w + pad), head_h + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for j, prompt in enumerate(prompts):
        draw.multiline_text((label_w + j * (cell_w + pad), 2), "\n".join(textwrap.wrap(prompt, 22)), fill="black",
                            font=font, spacing=1)
    for i, (label, images) in enumerate(rows):
        y = head_h + i * (cell_h + pad)
        draw.multiline_text((2, y + 4), "\n".join(textwrap.wrap(label, 36)), fill="black", font=font)
        for j, image in enumerate(images):
            grid.paste(Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST), (label_w + j * (cell_w + pad), y))
    return grid


if __name__ == "__main__":
    sys.exit(main())
