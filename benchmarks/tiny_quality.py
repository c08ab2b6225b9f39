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

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tiny_quality", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, required=True, help="folder of tiny-{target}-{precision} bundles")
    ap.add_argument("--n", type=int, default=100, help="held-out prompts (prompt i with seed i)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    from flash_edge.bench.quality import compare
    from flash_edge.bench.size import artifact_sizes
    from flash_edge.bundle import Bundle
    from flash_edge.cli.common import quiet_libraries
    from flash_edge.distill.evaluate import eval_prompts
    from flash_edge.errors import FlashError, first_line
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
    ref_images = [reference.generate(p, seed=i) for i, p in enumerate(prompts)]
    ref_score = score(ref_images, prompts)  # floats in [0, 1], rounded to 8 bits as a PNG stores them
    rows = [{"bundle": "PyTorch fp32 reference", "target": "torch", "precision": "fp32 (reference)",
             "psnr_db_pooled": math.inf, "psnr_db_min": math.inf, "geneval": ref_score.as_dict()}]
    for path in bundles:
        bundle = Bundle.open(path)
        manifest = bundle.manifest
        row = {"bundle": path.name, "target": manifest["target"], "precision": manifest["precision"],
               "size_mb": round(artifact_sizes(bundle)["bundle_bytes"] / 1e6, 2),
               "export_image_psnr_db": (((manifest.get("parity") or {}).get("results") or {}).get("image") or {})
               .get("psnr_db")}
        try:
            pipe = FlashPipeline.from_bundle(path)
        except FlashError as e:
            row["not_run"] = first_line(e)
            rows.append(row)
            continue
        say(f"{path.name}: {a.n} prompts")
        t0 = time.perf_counter()
        images = [pipe.generate(p, seed=i) for i, p in enumerate(prompts)]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        quality = compare(ref_images, images)
        row["psnr_db_pooled"], row["psnr_db_min"] = quality["psnr_db_pooled"], quality["psnr_db_min"]
        row["geneval"] = score(images, prompts).as_dict()
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
