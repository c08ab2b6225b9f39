"""Scenario ``tiny-quality``: what each precision costs on the *trained* built-in model, in pixels and in
prompt adherence. Every bundle of ``tiny`` that runs here generates the held-out mini-GenEval prompts (prompt i
with seed i, the prompts the distillation results table uses); each is scored with mini-GenEval and compared
with the fp32 PyTorch reference (pooled PSNR, worst prompt). Core ML bundles cannot run off macOS: their row
gives the export's own parity record (image PSNR at the gate prompt) and no mini-GenEval.

    nice -n 10 .venv/bin/python -m benchmarks.tiny_quality --bundles /tmp/tinybench/bundles [--n 100]

Bundles missing under ``--bundles`` are exported first (``benchmarks.tiny.export_all``). Writes
``benchmarks/results/tiny-quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def as_uint8(image: np.ndarray) -> np.ndarray:
    """The pipeline's (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, as a PNG stores it."""
    return (np.clip(image[0].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)


def pooled_psnr(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """(PSNR of the pooled MSE, worst single-prompt PSNR) on [0, 1] floats, in dB."""
    mses = [float(np.mean((r.astype(np.float64) - c.astype(np.float64)) ** 2)) for r, c in zip(reference, candidate)]
    db = lambda m: math.inf if m == 0 else 10 * math.log10(1.0 / m)  # noqa: E731
    return db(float(np.mean(mses))), db(max(mses))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tiny_quality", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, required=True, help="folder of tiny-{target}-{precision} bundles")
    ap.add_argument("--n", type=int, default=100, help="held-out prompts (prompt i with seed i)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from flash_edge.cli.common import quiet_libraries
    from flash_edge.distill.evaluate import eval_prompts
    from flash_edge.errors import FlashError
    from flash_edge.eval.geneval import score
    from flash_edge.pipeline import FlashPipeline

    from .tiny import export_all

    quiet_libraries()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    bundles, skipped = export_all(a.bundles, say=say)
    reference = FlashPipeline.from_model("tiny")
    size = reference.spec.height
    prompts = eval_prompts(a.n, size=size)
    say(f"reference: {a.n} prompts")
    ref_float = [reference.generate(p, seed=i) for i, p in enumerate(prompts)]
    ref_score = score([as_uint8(x) for x in ref_float], prompts)
    rows = [{"bundle": "PyTorch fp32 reference", "target": "torch", "precision": "fp32 (reference)",
             "psnr_db_pooled": math.inf, "psnr_db_min": math.inf, "geneval": ref_score.as_dict()}]
    for path in bundles:
        manifest = json.loads((path / "manifest.json").read_text())
        row = {"bundle": path.name, "target": manifest["target"],
               "precision": path.name.rsplit("-", 1)[-1],
               "size_mb": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 2),
               "export_image_psnr_db": (((manifest.get("parity") or {}).get("results") or {}).get("image") or {})
               .get("psnr_db")}
        try:
            pipe = FlashPipeline.from_bundle(path)
        except FlashError as e:
            row["not_run"] = str(e).splitlines()[0]
            rows.append(row)
            continue
        say(f"{path.name}: {a.n} prompts")
        t0 = time.perf_counter()
        images = [pipe.generate(p, seed=i) for i, p in enumerate(prompts)]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["psnr_db_pooled"], row["psnr_db_min"] = pooled_psnr(ref_float, images)
        row["geneval"] = score([as_uint8(x) for x in images], prompts).as_dict()
        rows.append(row)
    for name, why in skipped.items():
        rows.append({"bundle": name, "not_exported": why.splitlines()[0]})
    record = {"command": "python -m benchmarks.tiny_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
              "n_prompts": a.n, "image_size": size, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tiny-quality.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (a.out / "tiny-quality.md").write_text(render(record))
    print(render(record))
    return 0


def render(record: dict) -> str:
    num = lambda v, f="{:.1f}": "" if v is None else ("exact" if v == math.inf else f.format(v))  # noqa: E731
    lines = ["# The trained `tiny` per backend and precision: PSNR vs fp32 PyTorch and mini-GenEval", "",
             f"Command: `{record['command']}`. {record['n_prompts']} held-out prompts, prompt i with seed i, "
             f"{record['image_size']}x{record['image_size']}, 4 steps.", "",
             "| bundle | precision | MB | PSNR dB (pooled) | PSNR dB (worst prompt) | mini-GenEval overall | colour | shape "
             "| position | count | two-object | note |", "|---" * 12 + "|"]
    for r in record["rows"]:
        g = r.get("geneval") or {}
        note = r.get("not_run") or r.get("not_exported") or ""
        if "not_run" in r and r.get("export_image_psnr_db") is not None:
            note = f"export gate image PSNR {r['export_image_psnr_db']:.1f} dB; not run here: {note}"
        lines.append("| " + " | ".join([
            r["bundle"], r.get("precision", ""), num(r.get("size_mb"), "{:.2f}"), num(r.get("psnr_db_pooled")),
            num(r.get("psnr_db_min")), num(g.get("overall"), "{:.3f}"),
            *[num(g.get(c), "{:.2f}") for c in ("colour", "shape", "position", "count", "two-object")],
            note[:160]]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
