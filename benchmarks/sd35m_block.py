"""Scenario ``sd35m-block``: one SD3.5-Medium transformer block (benchmarks/block.py) at 512^2 and 1024^2
(1024 and 4096 image tokens + 333 text tokens) on every registered target and precision, against PyTorch
eager fp32 and bf16. SD3.5-Medium runs 24 such blocks per step, so block time x 24 estimates a step.

  nice -n 10 .venv/bin/python -m benchmarks.sd35m_block [--tokens 1024 4096] [--repeats 3] [--cap-gb 6]

Every case (target x precision x size) runs in a fresh child process, so its peak RSS is its own and a case
that would exhaust the machine is stopped at ``--cap-gb`` (recorded, not hidden). A target is reached only
through the public contracts: ``exporter.export_component("transformer_block", module, block_spec(...), dir)``,
then ``backend_class(exporter.backend)().open(dir, "transformer_block", artifact.entry(target, spec))``.
Targets whose runtime cannot run here (Core ML on Linux) get their export time and size only.
Writes benchmarks/results/sd35m-block.json and .md (machine, command, every raw time).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCKS_PER_STEP = 24
EAGER = "torch-eager"
# The torch target saves a diffusers/transformers model with its config and the torch backend rebuilds it by
# class; a bare block has neither, and running it in PyTorch is what the eager rows measure.
NOT_BLOCK_TARGETS = ("torch",)


def cases(targets: list[str] | None = None) -> list[tuple[str, str]]:
    """(target, precision) for PyTorch eager fp32/bf16 and every other registered exporter's precisions."""
    from flash_edge.export import REGISTRY, exporter_class

    out = [(EAGER, "fp32"), (EAGER, "bf16")]
    for target in REGISTRY:
        if target in NOT_BLOCK_TARGETS or (targets and target not in targets):
            continue
        out += [(target, p) for p in exporter_class(target).precisions]
    return out


# ----------------------------------------------------------------------------- one case, in a child process
def run_case(target: str, precision: str, image_tokens: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from benchmarks.block import block_module, block_spec, flops
    from flash_edge.bench.measure import PeakRSS, lifetime_peak_rss, time_runs
    from flash_edge.metrics import psnr

    spec = block_spec(image_tokens)
    feeds = spec.dummy_inputs(seed=0)
    rec = {"target": target, "precision": precision, "image_tokens": image_tokens,
           "text_tokens": spec.inputs[1].shape[1], "flops": flops(image_tokens), "phases": {}}
    with PeakRSS() as build:
        module = block_module()
    rec["phases"]["build"] = build.record()
    with torch.inference_mode():
        reference = [o.numpy() for o in module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))]
    if target == EAGER:  # the baseline itself: the same module in PyTorch, no export
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        module = module.to(dtype)
        inputs = [torch.from_numpy(feeds[n]).to(dtype) for n in spec.input_names]

        def run():
            with torch.inference_mode():
                return [o.float().numpy() for o in module(*inputs)]
        rec["backend"] = f"torch {torch.__version__} eager"
    else:
        from flash_edge.export import get_exporter
        from flash_edge.runtimes import backend_class

        exporter = get_exporter(target, precision)
        tmp = Path(tempfile.mkdtemp(prefix=f"block-{target}-{precision}-"))
        with PeakRSS() as export:
            artifact = exporter.export_component("transformer_block", module, spec, tmp)
        rec["phases"]["export"] = export.record()
        rec["bytes"] = sum((tmp / f).stat().st_size for f in artifact.files)
        del module
        backend = backend_class(exporter.backend)
        reason = backend.unavailable_reason()
        rec["backend"] = exporter.backend
        if reason:
            rec["not_run"] = reason
            rec["peak_rss"] = lifetime_peak_rss()
            return rec
        with PeakRSS() as load:
            session = backend().open(tmp, "transformer_block", artifact.entry(target, spec))
        rec["phases"]["open"] = load.record()

        def run():
            out = session.run(feeds)
            return [out[n] for n in spec.output_names]
    with PeakRSS() as timed:
        rec["seconds"] = time_runs(run, repeats)
    rec["phases"]["run"] = timed.record()
    outputs = run()
    rec["psnr_db"] = min(psnr(r, np.asarray(o)) for r, o in zip(reference, outputs))
    rec["peak_rss"] = lifetime_peak_rss()
    return rec


def spawn(case: str, meta: dict, repeats: int, cap: float, timeout: float,
          module: str = "benchmarks.sd35m_block", extra: tuple[str, ...] = ()) -> dict:
    """Run ``python -m module --case case [extra]`` in a child; stop it when its RSS (with its children) passes
    ``cap`` bytes or it runs past ``timeout``. A failed or stopped case is ``meta`` with the reason under ``error``."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", module, "--case", case, "--repeats", str(repeats), "--json", str(out), *extra]
    child = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    proc, peak, t0, verdict = psutil.Process(child.pid), 0, time.monotonic(), None
    while child.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        if rss > cap:
            verdict = f"stopped: RSS passed the {cap / 2**30:.0f} GiB cap (reached {rss / 2**30:.1f} GiB)"
        elif time.monotonic() - t0 > timeout:
            verdict = f"stopped: longer than {timeout:.0f} s"
        if verdict:
            child.kill()
            break
        time.sleep(0.2)
    _, err = child.communicate()
    if verdict:
        return {**meta, "error": verdict, "peak_rss_sampled": peak}
    if child.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        return {**meta, "error": f"failed (exit {child.returncode}): {lines[-1] if lines else '?'}"[:400]}
    rec = json.loads(out.read_text())
    out.unlink()
    rec["peak_rss_sampled"] = peak
    return rec


# ----------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    """The tables; ``results`` as measured or as read back from the JSON (where infinities are "inf")."""
    gemm = results["gemm"]["peak_flops_per_s"]
    lines = ["# sd35m-block: one SD3.5-Medium transformer block", "",
             f"Machine: {results['machine_label']}; load average at start {results['load_average_start']}, "
             f"at the end {results['machine'].get('load_average')}. Absolute times are for this machine (shared with "
             f"other jobs while measured); quote the ratios.", "", f"Command: `{results['command']}`", "",
             f"Block: hidden 1536, 24 heads, rms qk-norm, dual attention; {results['text_tokens']} text tokens; "
             f"median of {results['repeats']} run(s) after 1 warm-up. Per step = block x {BLOCKS_PER_STEP}. "
             f"float32 GEMM peak measured in this run: {gemm / 1e9:.1f} GFLOP/s.", ""]
    for tokens in results["tokens"]:
        rows = [r for r in results["cases"] if r["image_tokens"] == tokens]
        base = next((r for r in rows if r["target"] == EAGER and r["precision"] == "fp32" and "seconds" in r), None)
        lines += [f"## {results['sizes'].get(str(tokens), 'custom size')} ({tokens} image tokens)", "",
                  "| target | precision | block s | per step s (x24) | speed-up vs eager fp32 | GFLOP/s (of GEMM peak) "
                  "| PSNR dB vs fp32 | file MB | peak RSS GB | note |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "seconds" in r:
                med = r["seconds"]["median"]
                rate = r["flops"] / med
                lines.append(f"| {r['target']} | {r['precision']} | {med:.3f} | {med * BLOCKS_PER_STEP:.1f} | "
                             f"{base['seconds']['median'] / med:.2f}x | {rate / 1e9:.1f} ({rate / gemm:.0%}) | "
                             f"{float(r['psnr_db']):.1f} | {r.get('bytes', 0) / 1e6:.0f} | {r['peak_rss'] / 1e9:.2f} | |"
                             if base else f"| {r['target']} | {r['precision']} | {med:.3f} | | | | | | | |")
            else:
                note = r.get("error") or f"not run here: {r.get('not_run')}"
                size = f"{r['bytes'] / 1e6:.0f}" if "bytes" in r else ""
                lines.append(f"| {r['target']} | {r['precision']} | | | | | | {size} | | {note.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def harness_arguments(p: argparse.ArgumentParser, cap_gb: float, timeout: float, out: str) -> None:
    """The arguments every ``spawn``-driven scenario takes: the per-case caps, the output stem and the
    hidden ``--case``/``--json`` pair a child is started with."""
    p.add_argument("--cap-gb", type=float, default=cap_gb, help="stop a case whose RSS passes this (GiB)")
    p.add_argument("--timeout", type=float, default=timeout, help="stop a case after this many seconds")
    p.add_argument("--out", default=str(RESULTS / out), help="writes OUT.json and OUT.md")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)


def kept_findings(md: Path) -> str:
    """The hand-written ``## Findings`` section of a results page, kept when a probe rewrites its tables."""
    old = md.read_text() if md.exists() else ""
    return old[old.index("## Findings"):] if "## Findings" in old else "## Findings\n\n(to be written)\n"


def write_results(results: dict, out: str, markdown) -> None:
    """The end machine state, then ``out``.json (the raw data, first) and ``out``.md (``markdown(results)``)."""
    from flash_edge.bench.measure import machine_info, machine_label
    from flash_edge.jsonsafe import json_safe

    results["machine"] = machine_info()
    results["machine_label"] = machine_label(results["machine"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(json_safe(results), indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd35m_block", description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096], help="image tokens (1024 = 512^2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", nargs="+", help="only these exporter targets (eager baselines always run)")
    harness_arguments(p, cap_gb=6.0, timeout=1200.0, out="sd35m-block")
    args = p.parse_args(argv)
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    if args.case:  # child
        target, precision, tokens = args.case.split(":")
        Path(args.json).write_text(json.dumps(run_case(target, precision, int(tokens), args.repeats), default=float))
        return 0
    from flash_edge.bench.measure import gemm_peak, machine_info

    machine = machine_info()
    results = {"command": shlex.join(["python", "-m", "benchmarks.sd35m_block", *argv]),
               "load_average_start": machine["load_average"], "tokens": args.tokens, "repeats": args.repeats,
               "text_tokens": 333, "sizes": {"1024": "512x512", "4096": "1024x1024"}, "cases": []}
    results["gemm"] = gemm_peak()
    for tokens in args.tokens:
        for target, precision in cases(args.targets):
            print(f"[{time.strftime('%H:%M:%S')}] {target} {precision} at {tokens} image tokens", file=sys.stderr,
                  flush=True)
            rec = spawn(f"{target}:{precision}:{tokens}", {"target": target, "precision": precision,
                        "image_tokens": tokens}, args.repeats, args.cap_gb * 2**30, args.timeout)
            print(f"    {rec.get('seconds', {}).get('median', rec.get('error') or rec.get('not_run'))}",
                  file=sys.stderr, flush=True)
            results["cases"].append(rec)
    write_results(results, args.out, markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
