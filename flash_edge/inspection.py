"""What a bundle holds, for people and scripts (``flash-inspect``): per component its target, precision, size
and chunks; the sampler and image; the parity results and warnings the export recorded; and whether every file
still matches its sha256.

Everything comes from ``Bundle.open``, so an inspected bundle has passed the same validation as one that runs.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import Bundle


def describe(path: str | Path, verify: bool = True) -> dict:
    """The bundle at ``path`` as plain data (what ``flash-inspect --json`` prints)."""
    bundle = Bundle.open(path, verify=verify)
    m, spec, files = bundle.manifest, bundle.spec, bundle.manifest["files"]
    components = {}
    for name, entry in bundle.components.items():
        chunks = entry.options.get("chunks") or []
        components[name] = {"target": entry.target, "precision": entry.precision, "path": entry.path,
                            "bytes": sum(files[f]["size"] for f in entry.files if f in files),
                            "files": len(entry.files), "chunks": len(chunks) or None}
    parity = m.get("parity", {})
    s = spec.sampler
    return {
        "bundle": str(path), "format_version": m["format_version"], "sdk_version": m.get("sdk_version"),
        "model": m.get("model", {}).get("name"),
        "parameters": sum(m.get("model", {}).get("parameters", {}).values()) or None,
        "image": {"width": spec.width, "height": spec.height},
        "sampler": {"steps": s.steps, "rule": s.rule, "sigmas": list(s.sigmas), "guidance_scale": s.guidance_scale,
                    "shift": s.shift},
        "text": {"clip_tokens": spec.text.clip_tokens, "t5": spec.text.t5, "t5_tokens": spec.text.t5_tokens,
                 "folded": "transformer" in bundle.components
                 and bool(bundle.components["transformer"].options.get("folded_t5_slots"))},
        "decode": {"tile": spec.decode.tile, "overlap": spec.decode.overlap} if spec.decode.tiled else None,
        "components": components,
        "bytes": sum(f["size"] for f in files.values()),
        "parity": {"status": parity.get("status"), "reason": parity.get("reason"),
                   "results": {k: {"psnr_db": v.get("psnr_db"), "floor_db": v.get("floor_db"), "passed": v.get("passed")}
                               for k, v in (parity.get("results") or {}).items()}},
        "warnings": list(m.get("warnings", [])),
        "verified": {"files": len(files), "sha256": verify},
        "tools": m.get("tools", {}),
    }


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _db(x) -> str:
    """A PSNR as the manifest stores it: a number, "inf" (identical), or absent."""
    return "-" if x is None else f"{x:.1f}" if isinstance(x, (int, float)) else str(x)


def render(d: dict) -> str:
    """``describe``'s result as the text ``flash-inspect`` prints."""
    s, img, t = d["sampler"], d["image"], d["text"]
    folded = ", folded into one in the transformer" if t["folded"] else ""
    slots = f" ({t['t5_tokens']} slots{folded})" if t["t5_tokens"] else ""
    lines = [f"bundle      {d['bundle']} (format {d['format_version']}, flash-edge {d['sdk_version']})",
             f"model       {d['model']}" + (f", {d['parameters']:,} parameters" if d["parameters"] else ""),
             f"image       {img['width']}x{img['height']}"
             + (f", decoded in {d['decode']['tile']}-cell tiles (overlap {d['decode']['overlap']})" if d["decode"] else ""),
             f"sampler     {s['steps']} steps, {s['rule']}, sigmas {', '.join(f'{x:.4g}' for x in s['sigmas'])}"
             + (f", guidance {s['guidance_scale']:g}" if s["guidance_scale"] > 1 else ""),
             f"text        {t['clip_tokens']} CLIP tokens, T5 {t['t5']}{slots}",
             "", f"{'component':<16}{'target':<12}{'precision':<11}{'size':>10}  chunks"]
    for name, c in d["components"].items():
        lines.append(f"{name:<16}{c['target']:<12}{c['precision']:<11}{_size(c['bytes']):>10}  {c['chunks'] or '-'}")
    lines.append(f"{'total':<39}{_size(d['bytes']):>10}")
    p = d["parity"]
    lines += ["", f"parity      {p['status']}" + (f" ({p['reason']})" if p.get("reason") else "")]
    for name, r in p["results"].items():
        verdict = {True: "ok", False: "FAILED", None: ""}[r["passed"]]
        lines.append(f"  {name:<16}{_db(r['psnr_db']):>7} dB  (floor {_db(r['floor_db'])})  {verdict}")
    lines.append("warnings    " + ("none" if not d["warnings"] else d["warnings"][0]))
    lines += [f"            {w}" for w in d["warnings"][1:]]
    v = d["verified"]
    lines.append(f"files       {v['files']} files, " + ("sizes and sha256 match the manifest" if v["sha256"]
                                                        else "sizes match (sha256 not checked: --no-verify)"))
    return "\n".join(lines)
