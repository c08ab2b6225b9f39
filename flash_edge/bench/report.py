"""results.json (everything, raw timings included) and results.md (the tables a person reads first).

Ratios are what to quote; absolute times belong to the machine named at the top of results.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..jsonsafe import json_safe  # noqa: F401 - benchmarks import it from here too

MB = 1e6


def _write(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(results: dict, path: Path) -> Path:
    return _write(path, json.dumps(json_safe(results), indent=1) + "\n")


# ----------------------------------------------------------------------------- formatting
def _num(value, fmt: str = "{:.3g}", none: str = "n/a") -> str:
    if value is None:
        return none
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "exact (inf)"
    return fmt.format(value)


def _ms(summary) -> str:
    return _num(summary["median"] * 1e3, "{:.4g}") if summary else "n/a"


def _x(ratio) -> str:
    return _num(ratio, "{:.2f}x")


def _mb(nbytes) -> str:
    return _num(nbytes / MB if nbytes is not None else None, "{:.1f}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out + [""]


def _backend(row: dict) -> str:
    return ",".join(sorted(set((row.get("backends") or {}).values()))) or "?"


def _memory(row: dict, key: str):
    mem = row.get("memory") or {}
    if "error" in mem:
        return None
    return mem.get("phases", {}).get(key, {}).get("peak_rss") if key in ("load", "encode", "denoise", "decode") \
        else mem.get(key)


def _e2e(lat: dict, steps) -> dict | None:
    return lat["e2e"].get(str(steps))


# ----------------------------------------------------------------------------- markdown
def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for r in results["bundles"]:
        lat, size, q, fl, ra = r["latency"], r["size"], r["quality"], r.get("flops") or {}, r.get("ratios", {})
        tr = size["components"].get("transformer", {})
        rows.append([r["label"], _backend(r), r.get("precision") or "?", _mb(size["artifacts_bytes"]),
                     _num(tr.get("bits_per_parameter"), "{:.2f}"), _ms(lat["components"]["transformer"]),
                     f"{_ms(_e2e(lat, lat['bundle_steps']))} ({lat['bundle_steps']})",
                     *(_x(ra.get(k)) + (" ~" if k in ra.get("within_noise", ()) else "")
                       for k in ("step_vs_reference", "e2e_vs_reference", "e2e_vs_diffusers")),
                     _x(lat["teacher"]["speedup"]) + ("" if lat["teacher"]["basis"] == "measured" else " (est.)"),
                     _mb(_memory(r, "generation_peak_rss")), _num(q.get("psnr_db_pooled"), "{:.1f}"),
                     _num(q.get("ssim_mean"), "{:.4f}"), _num(fl.get("fraction_of_gemm_peak"), "{:.1%}")])
    return rows


SUMMARY_HEADER = ["bundle", "backend", "precision", "size MB", "bits/param (transformer)", "step ms",
                  "end to end ms (steps)", "step speed-up vs PyTorch fp32", "end-to-end speed-up vs PyTorch fp32",
                  "end-to-end speed-up vs diffusers", "few-step vs teacher (40 steps, CFG 4.5)",
                  "peak RSS MB (generation)", "PSNR dB", "SSIM", "step FLOP/s of GEMM peak"]


def _latency_row(label: str, lat: dict, load: float | None) -> list[str]:
    c = lat["components"]
    teacher = lat["teacher"]
    return [label, _num(load, "{:.3g}"), _num(lat["text_encoders_s"] * 1e3, "{:.4g}"), _ms(c["transformer"]),
            _ms(c["vae_decoder"]), *(_ms(_e2e(lat, s)) for s in (1, 2, 4)),
            _num(teacher["teacher_s"] * 1e3, "{:.4g}") + ("" if teacher["basis"] == "measured" else " (est.)")]


def markdown(results: dict) -> str:
    s, gemm = results["settings"], results["gemm"]
    lines = ["# flash-bench results", "",
             f"Machine: {results['machine_label']}. Absolute times are for this machine only; quote the ratios. '~' marks a ratio within "
             "run-to-run noise (no further from 1 than the two timings' (max - min) / median together).",
             f"Load average at start: {s.get('load_average_start')}, at the end: "
             f"{results['machine'].get('load_average')}.", "",
             f"Command: `{results['command']}`; {results['started']} to {results['finished']}.",
             f"Medians of {s['repeats']} run(s) after {s.get('warmup', 1)} warm-up(s) (p90 and every raw time in "
             "results.json). "
             f"Quality: {len(s['prompts'])} prompts, prompt i with seed i, against the fp32 PyTorch reference.",
             f"GEMM peak (float32, {gemm['n']}^3, best of numpy/torch): "
             f"{gemm['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({gemm['best']}).", "",
             "## Summary (one row per bundle)", ""]
    lines += _table(SUMMARY_HEADER, summary_rows(results))
    if results.get("not_run"):
        lines += ["## Bundles that cannot run on this machine (size and the export's parity record only)", ""]
        lines += _table(["bundle", "target", "precision", "size MB", "bits/param (transformer)",
                         "image PSNR dB at export", "why not run"], [
            [r["label"], r["target"] or "?", r["precision"] or "?", _mb(r["size"]["artifacts_bytes"]),
             _num(r["size"]["components"].get("transformer", {}).get("bits_per_parameter"), "{:.2f}"),
             _num(((r.get("parity") or {}).get("results") or {}).get("image", {}).get("psnr_db"), "{:.1f}"),
             r["reason"]] for r in results["not_run"]])

    lines += ["## Latency (median ms; cold load in s)", ""]
    lat_rows = []
    for b in results["baselines"]:
        lat_rows.append(_latency_row(f"baseline: {b['label']}", b["latency"], b["load"]["median"]))
        d = b.get("diffusers") or {}
        if "e2e" in d:
            e2e = {str(d["steps"]): d["e2e"]}
            lat_rows.append([f"baseline: {d['label']}", _num(d["load_s"], "{:.3g}"), "", "", "",
                             *(_ms(e2e.get(str(k))) if str(k) in e2e else "" for k in (1, 2, 4)), ""])
    for r in results["bundles"]:
        cold = (r.get("memory") or {}).get("cold_load_s")
        lat_rows.append(_latency_row(r["label"], r["latency"], cold if cold is not None else r["load_in_process"]["median"]))
    lines += _table(["row", "cold load s", "text encoders", "transformer step", "VAE decode", "1 step", "2 steps",
                     "4 steps", "teacher: 40 steps, CFG 4.5"], lat_rows)

    lines += ["## Peak resident memory (MB, from the OS, each bundle in a fresh process)", ""]
    mem_rows = []
    for r in results["bundles"]:
        mem = r.get("memory") or {"error": "not measured"}
        if "error" in mem:
            mem_rows.append([r["label"], mem["error"]] + [""] * 7)
            continue
        ph = mem["phases"]
        mem_rows.append([r["label"], mem["method"], _mb(mem["rss_start"]),
                         *(_mb(ph[k]["peak_rss"]) for k in ("load", "encode", "denoise", "decode")),
                         _mb(mem["generation_peak_rss"]), _num(mem["cold_load_s"], "{:.3g}")])
    lines += _table(["bundle", "method", "start", "load", "encode", "denoise", "decode", "whole generation",
                     "cold load s"], mem_rows)

    lines += ["## Artifact size (MB, bits per parameter)", ""]
    comps = sorted({c for r in results["bundles"] for c in r["size"]["components"]})
    size_rows = []
    for r in results["bundles"]:
        sc = r["size"]["components"]
        size_rows.append([r["label"], *(f"{_mb(sc[c]['bytes'])} ({_num(sc[c]['bits_per_parameter'], '{:.2f}')})"
                                         if c in sc else "" for c in comps),
                          _mb(r["size"]["artifacts_bytes"]), _num(r["size"]["bits_per_parameter"], "{:.2f}")])
    lines += _table(["bundle", *comps, "total", "bits/param (total)"], size_rows)
    lines += ["(vae_decoder is counted against the whole VAE's parameters, encoder included.)", ""]

    lines += ["## Quality against the fp32 PyTorch reference", ""]
    q_rows = []
    for r in results["bundles"]:
        q = r["quality"]
        q_rows.append([r["label"], q["error"]] + [""] * 4 if "error" in q else
                      [r["label"], _num(q["psnr_db_pooled"], "{:.2f}"), _num(q["psnr_db_min"], "{:.2f}"),
                       _num(q["ssim_mean"], "{:.4f}"), _num(q["ssim_min"], "{:.4f}"), str(q["prompts"])])
    lines += _table(["bundle", "PSNR dB (pooled)", "PSNR dB (worst prompt)", "SSIM (mean)", "SSIM (worst)",
                     "prompts"], q_rows)

    lines += ["## Transformer compute (FLOPs counted from the model config)", ""]
    f_rows = []
    for label, fl in [(f"baseline: {b['label']}", b.get("flops")) for b in results["baselines"]] + \
                     [(r["label"], r.get("flops")) for r in results["bundles"]]:
        if fl:
            f_rows.append([label, f"{fl['image_tokens']} + {fl['text_tokens']}",
                           _num(fl["transformer_call_flops"] / 1e9, "{:.4g}"),
                           _num(fl["achieved_flops_per_s"] / 1e9, "{:.3g}"), _num(fl["fraction_of_gemm_peak"], "{:.1%}")])
    lines += _table(["row", "tokens (image + text)", "GFLOP per step", "achieved GFLOP/s", "of GEMM peak"], f_rows)

    notes = [f"- {b['diffusers']['label']}: {n}" for b in results["baselines"] for n in
             (b.get("diffusers") or {}).get("notes", [])]
    notes += [f"- diffusers baseline not run: {b['diffusers']['error']}" for b in results["baselines"]
              if "error" in (b.get("diffusers") or {})]
    for b in results["baselines"]:
        d = b.get("diffusers") or {}
        if "psnr_vs_reference_db" in d:
            notes.append(f"- diffusers' image vs the reference (same latents, prompt 0): "
                         f"{_num(d['psnr_vs_reference_db'], '{:.1f}')} dB")
    unavailable = [f"{k}: {v}" for k, v in results["backends_registered"].items() if v != "available"]
    notes.append(f"- backends registered: {', '.join(results['backends_registered'])}"
                 + (f" (not available here: {'; '.join(unavailable)})" if unavailable else ""))
    lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def write_markdown(results: dict, path: Path) -> Path:
    return _write(path, markdown(results))
