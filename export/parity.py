"""The parity gate: an exported bundle must reproduce the fp32 PyTorch reference before it is written.

Per component, on the spec's dummy inputs: PSNR of each output against the reference (data range = the
reference output's peak-to-peak; the worst output counts). For the whole pipeline: PSNR of the decoded
image (range 1) for a fixed prompt and seed. Floors come from the exporter per component and precision.
"""

from __future__ import annotations

from ..errors import BackendUnavailable, ParityError
from ..metrics import max_abs_diff, psnr
from .mixed import distinct

GATE_PROMPT = "a red circle above a blue square"
GATE_SEED = 0


def compare_components(reference, candidate, specs) -> dict[str, dict]:
    out = {}
    for name, spec in specs.items():
        feeds = spec.dummy_inputs(seed=0)
        ref, cand = reference.sessions[name].run(feeds), candidate.sessions[name].run(feeds)
        out[name] = {"psnr_db": min(psnr(ref[k], cand[k]) for k in ref),
                     "max_abs_diff": max(max_abs_diff(ref[k], cand[k]) for k in ref)}
    return out


def run_gate(exporter, reference, bundle_dir, specs, exporters: dict | None = None) -> dict:
    """Measure; raise ``ParityError`` with the numbers if a floor is missed. Returns the manifest record.
    ``exporters``: {component: exporter} of a bundle mixing targets (``mixed.py``): each component runs on its
    own target's backend against its own floor, and the image holds the loosest image floor among them."""
    exporters = exporters or {name: exporter for name in specs}
    others = {n: e for n, e in exporters.items() if e is not exporter}
    try:
        options = {k: v for e in others.values() for k, v in e.candidate_options().items()}
        candidate = exporter.candidate_pipeline(bundle_dir, backends={n: e.backend for n, e in others.items()},
                                                options=options)
    except BackendUnavailable as e:
        return {"status": "not run", "reason": str(e)}
    results = compare_components(reference, candidate, specs)
    ref_img = reference.generate(GATE_PROMPT, seed=GATE_SEED)
    cand_img = candidate.generate(GATE_PROMPT, seed=GATE_SEED)
    results["image"] = {"psnr_db": psnr(ref_img, cand_img, data_range=1.0),
                        "max_abs_diff": max_abs_diff(ref_img, cand_img)}
    failures = []
    for name, r in results.items():
        own = [exporters[name]] if name in exporters else distinct(exporter, exporters)  # "image": every target
        r["floor_db"] = min(e.parity_floor_db(name, e.precision) for e in own)
        r["passed"] = r["psnr_db"] >= r["floor_db"]
        if not r["passed"]:
            failures.append(f"{name} {r['psnr_db']:.1f} dB < {r['floor_db']:.1f} dB "
                            f"(max abs diff {r['max_abs_diff']:.3g})")
    record = {"status": "passed" if not failures else "failed", "prompt": GATE_PROMPT, "seed": GATE_SEED,
              "backend": candidate.info.get("backends"), "results": results}
    if failures:
        what = f"{exporter.target} {exporter.precision}" + (" (mixed)" if others else "")
        raise ParityError(f"{what} export fails the parity gate: " + "; ".join(failures)
                          + " (--skip-parity writes it anyway, marked in the manifest)")
    return record
