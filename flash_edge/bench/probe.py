"""Cold load and peak memory of one bundle, measured in a fresh process.

The benchmark process holds the reference model and other bundles, so its memory says nothing about one
bundle's. This probe starts a new Python, loads the bundle and generates one image, and reports what the
OS says about each phase: load (backend library import + artifact load), encode, denoise, decode. The
whole generation's peak is the largest of its three phases (they run back to back). Run as
``python -m flash_edge.bench.probe --bundle B [--backend auto]``; it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from ..memory import POLICIES
from ..errors import FlashError

from ..export.parity import GATE_PROMPT as PROBE_PROMPT, GATE_SEED as PROBE_SEED  # one check prompt everywhere


def probe(bundle: str, backend: str = "auto", memory: str = "fast", threads: int | None = None) -> dict:
    t_import = time.perf_counter()
    from ..pipeline import FlashPipeline
    from ..runtimes import parse_choice
    from .measure import PeakRSS, current_rss, lifetime_peak_rss

    import_s = time.perf_counter() - t_import
    start = current_rss()
    with PeakRSS() as load:
        pipe = FlashPipeline.from_bundle(bundle, **parse_choice(backend), verify=False, memory=memory,
                                         **({"threads": threads} if threads else {}))
    spec = pipe.spec
    with PeakRSS() as enc:
        cond = pipe.encode(PROBE_PROMPT)
        uncond = pipe.encode("") if spec.sampler.guidance_scale > 1 else None
    with PeakRSS() as den:
        latent = pipe.denoise(cond, PROBE_SEED, uncond)
    with PeakRSS() as dec:
        pipe.decode(latent)
    phases = {"load": load.record(), "encode": enc.record(), "denoise": den.record(), "decode": dec.record()}
    return {"method": load.method, "pid": os.getpid(), "memory_policy": memory, "flash_edge_import_s": import_s, "rss_start": start,
            "backends": pipe.info.get("backends"), "phases": phases,
            "cold_load_s": load.seconds, "first_generation_s": enc.seconds + den.seconds + dec.seconds,
            "generation_peak_rss": max(p["peak_rss"] for k, p in phases.items() if k != "load"),
            "process_peak_rss": max(lifetime_peak_rss(), load.peak)}


def run_probe(bundle: str, backend: str = "auto", timeout: float | None = None, memory: str = "fast",
              threads: int | None = None) -> dict:
    """Run :func:`probe` in a child process; a failure comes back as ``{"error": "..."}`` (one line)."""
    cmd = [sys.executable, "-m", "flash_edge.bench.probe", "--bundle", str(bundle), "--backend", backend,
           "--memory", memory] + (["--threads", str(threads)] if threads else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        return {"error": f"memory probe failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from ..cli.common import quiet_libraries

    p = argparse.ArgumentParser(prog="python -m flash_edge.bench.probe", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--memory", default="fast", choices=POLICIES)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    quiet_libraries()
    try:
        result = probe(args.bundle, args.backend, args.memory, args.threads)
    except FlashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
