"""Why ExecuTorch (XNNPACK) is slower than it should be on one SD3.5-Medium block, and what closes the gap.

  nice -n 10 .venv/bin/python -m benchmarks.executorch_block [--tokens 1024] [--repeats 3] [--variants ...]

Each variant (PyTorch eager, or a lowering recipe of the executorch target) runs in a fresh child process:
build the block (benchmarks/block.py), export it through ``ExecuTorchExporter.export_component`` with the
variant's options, open it with ``ExecuTorchBackend``, time ``--repeats`` runs (median, one warm-up), check
PSNR against eager fp32, and profile one more run with ETDump (time per delegate call and per portable op).
Peak RSS is the child's own; a child over ``--cap-gb`` is stopped and recorded.
Writes benchmarks/results/executorch-block.json and .md (``--out`` for another stem; the .md keeps its hand-written
"## Findings").
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.sd35m_block import kept_findings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "executorch-block"
BLOCKS_PER_STEP = 24

# name -> (kind, recipe, attention, threads)
VARIANTS = {
    "eager-fp32": ("eager", "fp32", None, 2),
    "eager-fp32-1t": ("eager", "fp32", None, 1),
    "et-fp32-library-sdpa": ("executorch", "fp32", "library", 2),
    "et-fp32": ("executorch", "fp32", "softmax", 2),
    "et-fp32-1t": ("executorch", "fp32", "softmax", 1),
    "et-fp32-bmm": ("executorch", "fp32", "bmm", 2),
    "et-int8-library-sdpa": ("executorch", "int8-dynamic", "library", 2),
    "et-int8": ("executorch", "int8-dynamic", "softmax", 2),
    "et-int8-bmm": ("executorch", "int8-dynamic", "bmm", 2),
    "et-8da4w": ("executorch", "8da4w", "softmax", 2),
    "et-8da4w-bmm": ("executorch", "8da4w", "bmm", 2),
    "eager-fp32-folded": ("eager", "fp32", None, 2),
    "et-int8-bmm-folded": ("executorch", "int8-dynamic", "bmm", 2),
}
# "-folded": the block as a bundle without T5 runs it (flash_edge.folding): the 256 T5 slots enter as equal tokens
# and the block sees 77 + 1 of them, the last weighted 256 times; checked against the unfolded block on 333 tokens
CLIP_TOKENS = 77


def etdump_profile(pte: Path, inputs) -> dict:
    """One run with ETDump: seconds per event name (delegate calls, each portable op), summed."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte, enable_etdump=True, debug_buffer_size=0)
    program.load_method("forward").execute(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        program.write_etdump_result_to_file(f"{tmp}/run.etdp", f"{tmp}/debug.bin")
        frame = Inspector(etdump_path=f"{tmp}/run.etdp").to_dataframe()
    totals, counts = defaultdict(float), defaultdict(int)
    for name, raw in zip(frame["event_name"], frame["raw"]):
        if name in ("Method::init", "Program::load_method", "OPERATOR_CALL"):
            continue
        name = re.sub(r" #\d+$", "", name)  # XNNPACK numbers its operators: group them by kind
        totals[name] += sum(raw) / 1000.0  # ms -> s
        counts[name] += 1
    return {k: {"seconds": round(totals[k], 4), "calls": counts[k]}
            for k in sorted(totals, key=totals.get, reverse=True)}


def run_variant(name: str, image_tokens: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from benchmarks.block import block_module, block_spec, flops
    from flash_edge.bench.measure import PeakRSS, lifetime_peak_rss, time_runs
    from flash_edge.metrics import psnr

    kind, recipe, attention, threads = VARIANTS[name]
    fold = name.endswith("-folded")
    spec = block_spec(image_tokens)
    feeds = spec.dummy_inputs(seed=0)
    module = block_module()
    torch.set_num_threads(threads)
    if fold:  # the T5 slots as they reach a block: all equal
        feeds["encoder_hidden_states"][:, CLIP_TOKENS:] = feeds["encoder_hidden_states"][:, CLIP_TOKENS:CLIP_TOKENS + 1]
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    with torch.inference_mode():
        reference = [o.numpy().copy() for o in module(*args)]
    if fold:
        from flash_edge.folding import FoldedJointAttention

        keep, repeat = CLIP_TOKENS + 1, spec.inputs[1].shape[1] - CLIP_TOKENS
        module.block.attn.set_processor(FoldedJointAttention(repeat, image_tokens + keep))
        spec = block_spec(image_tokens, keep)
        feeds["encoder_hidden_states"] = np.ascontiguousarray(feeds["encoder_hidden_states"][:, :keep])
        args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
        reference[1] = reference[1][:, :keep]
    text_tokens = spec.inputs[1].shape[1]
    rec = {"variant": name, "kind": kind, "recipe": recipe, "attention": attention, "threads": threads,
           "image_tokens": image_tokens, "text_tokens": text_tokens, "flops": flops(image_tokens, text_tokens)}
    if kind == "eager":
        def run():
            with torch.inference_mode():
                return [o.numpy() for o in module(*args)]
    else:
        from flash_edge.export.executorch import ExecuTorchExporter
        from flash_edge.runtimes.executorch import ExecuTorchBackend

        exporter = ExecuTorchExporter("fp32", recipe=recipe, attention=attention, external_weights="never")
        tmp = Path(tempfile.mkdtemp(prefix=f"et-block-{name}-"))
        with PeakRSS() as export:
            artifact = exporter.export_component("transformer_block", module, spec, tmp)
        del module
        rec["export"] = export.record()
        rec["bytes"] = sum((tmp / f).stat().st_size for f in artifact.files)
        rec["delegation"] = artifact.options["delegation"]
        with PeakRSS() as load:
            session = ExecuTorchBackend(threads=threads).open(tmp, "transformer_block",
                                                               artifact.entry("executorch", spec))
        rec["open"] = load.record()

        def run():
            out = session.run(feeds)
            return [out[n] for n in spec.output_names]
    with PeakRSS() as timed:
        rec["seconds"] = time_runs(run, repeats)
    rec["run"] = timed.record()
    rec["psnr_db"] = min(psnr(r, np.asarray(o)) for r, o in zip(reference, run()))
    if kind == "executorch":
        rec["profile"] = etdump_profile(tmp / artifact.path, args)
    rec["peak_rss"] = lifetime_peak_rss()
    return rec


def spawn(name: str, tokens: int, repeats: int, cap: float) -> dict:
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks.executorch_block", "--one", name, "--tokens", str(tokens),
           "--repeats", str(repeats), "--json", str(out)]
    child = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    proc, peak, verdict = psutil.Process(child.pid), 0, None
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        if peak > cap:
            child.kill()
            verdict = f"stopped: RSS passed {cap / 2**30:.1f} GiB"
            break
        time.sleep(0.2)
    _, err = child.communicate()
    if child.returncode == 0 and out.stat().st_size:
        return json.loads(out.read_text())
    lines = [ln for ln in (err or "").splitlines() if ln.strip() and not ln.startswith(("[", "W1", "I1"))]
    return {"variant": name, "image_tokens": tokens, "failed": verdict or (lines[-1] if lines else "no output")}


def markdown(records: list[dict], commands: list[str], machine: str, findings: str) -> str:
    base = {r["image_tokens"]: r["seconds"]["median"] for r in records if r.get("variant") == "eager-fp32" and "seconds" in r}
    rows = ["| variant | image tokens | text tokens | recipe | attention | threads | median s | vs eager fp32 "
            "| x24 (step) | PSNR dB | file MB | delegated ops | subgraphs | peak RSS GB |", "|" + "---|" * 14]
    for r in records:
        if "failed" in r:
            rows.append(f"| {r['variant']} | {r['image_tokens']} | | | | | failed: {r['failed']} |" + " |" * 7)
            continue
        s = r["seconds"]["median"]
        d = r.get("delegation", {})
        rows.append(f"| {r['variant']} | {r['image_tokens']} | {r.get('text_tokens', 333)} | {r['recipe']} "
                    f"| {r['attention'] or '-'} | {r['threads']} | {s:.3f} | "
                    f"{base.get(r['image_tokens'], float('nan')) / s:.2f}x | {s * BLOCKS_PER_STEP:.1f} | "
                    f"{r['psnr_db']:.1f} | {r.get('bytes', 0) / 1e6:.0f} | "
                    f"{(str(round(100 * d['delegated_share'], 1)) + '%') if d else '-'} | "
                    f"{d.get('delegated_subgraphs', '-')} | {r['peak_rss'] / 2**30:.2f} |")
    prof = []
    for r in records:
        if r.get("profile"):
            top = list(r["profile"].items())[:10]
            prof.append(f"- **{r['variant']}** ({r['image_tokens']} tokens): " + ", ".join(f"{k} {v['seconds']:.3f}s/{v['calls']}" for k, v in top))
    tokens = sorted({r["image_tokens"] for r in records})
    return (f"# ExecuTorch on one SD3.5-Medium block ({', '.join(map(str, tokens))} image + 333 text tokens; "
            "'-folded': 77 + 1 weighted)\n\n"
            f"Commands: `{'`, `'.join(commands)}`  \nMachine: {machine}  \nEach variant in a fresh process; median of the "
            f"repeats after one warm-up; 'vs eager' > 1 means faster than PyTorch eager fp32 (2 threads).\n\n"
            + "\n".join(rows) + "\n\nETDump profile of one run (seconds / number of events, top 10; "
            "`DELEGATE_CALL` = time inside XNNPACK, `native_call_*` = portable kernels):\n\n" + "\n".join(prof)
            + "\n\n" + findings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024, help="image tokens (1024 = 512^2, 4096 = 1024^2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--cap-gb", type=float, default=8.0)
    p.add_argument("--out", default=str(RESULTS / NAME),
                   help="results stem: writes OUT.json and OUT.md; rows merge only with runs in the same file, "
                        "so give a run on another machine its own stem")
    p.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        import os

        os.environ.setdefault("TQDM_DISABLE", "1")
        Path(args.json).write_text(json.dumps(run_variant(args.one, args.tokens, args.repeats)))
        return 0
    from flash_edge.bench.measure import machine_info, machine_label

    records = []
    for name in args.variants:
        rec = spawn(name, args.tokens, args.repeats, args.cap_gb * 2**30)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("profile", "export", "open", "run")}), flush=True)
        records.append(rec)
    info = machine_info()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out.with_suffix(".md"), out.with_suffix(".json")
    findings = kept_findings(md_path)
    command = "nice -n 10 .venv/bin/python -m benchmarks.executorch_block " + " ".join(argv or sys.argv[1:])
    # a run at another token count adds to the results; a variant measured again at the same count replaces its row
    kept = json.loads(json_path.read_text()) if json_path.exists() else {"commands": [], "records": []}
    new = {(r["variant"], r["image_tokens"]) for r in records}
    records = [r for r in kept["records"] if (r["variant"], r["image_tokens"]) not in new] + records
    records.sort(key=lambda r: (r["image_tokens"], list(VARIANTS).index(r["variant"])))
    commands = [c for c in kept.get("commands", [kept.get("command")]) if c and c != command] + [command]
    json_path.write_text(json.dumps({"commands": commands, "machine": info, "records": records}, indent=1) + "\n")
    md_path.write_text(markdown(records, commands, machine_label(info), findings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
