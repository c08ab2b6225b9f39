"""The native runner (apps/cpp, ``flash-edge-run``) under each memory policy, with and without its XNNPACK weight
cache, one fresh process per case: seconds and peak RSS per stage and per run (the runner's ``--stats``: VmHWM
reset at each stage), the same generation ``--repeat`` times per process, and whether every case drew the same PNG.
Optionally the Python ExecuTorch path beside it (``--python``). Run it alone on the machine; it records the load
average.

  .venv/bin/python -m benchmarks.native_runner --runner build/native/flash-edge-run \\
      --bundle /data/sd35m/sd35m-executorch-int8-512 [--bundle ...] --prompt-file prompt.txt \\
      [--memory fast low stream] [--cache none cached] [--repeat 3] [--python] \\
      [--out benchmarks/results/sd35m-full/native-runner-policies.json]

Per image: the median of the runs after the first (the first pays what a fresh process pays: every program's
first load and, with ``cached``, the page cache). ``cached`` cases share one cache folder per bundle, written by a
priming process first (its time is reported as ``cache_write``), so every cached case maps packed weights instead
of packing them. ``vs_fast``: a case's per-image seconds over the uncached ``fast`` case's, from this same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = ("fast", "low", "stream")


def _child(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process: wall seconds, exit status, its stderr's last lines."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
    return {"returncode": done.returncode, "seconds": seconds, "stderr_tail": tail}


def _digest(png: Path) -> str:
    from PIL import Image

    return hashlib.sha256(Image.open(png).convert("RGB").tobytes()).hexdigest()[:16]


def run_case(runner: str, bundle: str, prompt: str, seed: int, png: Path, policy: str, cache: Path | None,
             repeat: int) -> dict:
    stats = png.with_suffix(".json")
    cmd = [runner, "--bundle", bundle, "--prompt", prompt, "--seed", str(seed), "--out", str(png), "--stats",
           str(stats), "--memory", policy, "--repeat", str(repeat)] + (["--weight-cache", str(cache)] if cache else [])
    row = {"memory": policy, "weight_cache": cache is not None, "repeat": repeat, "process": _child(cmd)}
    if row["process"]["returncode"] == 0:
        runs = json.loads(stats.read_text())["runs"]
        row["runs"] = runs
        row["per_image_s"] = statistics.median(r["seconds"] for r in (runs[1:] or runs))
        row["first_run_s"] = runs[0]["seconds"]
        # VmHWM is reset at every stage (which resets ru_maxrss too): the process's peak is the largest stage's
        row["peak_rss"] = max(s["peak_rss"] for r in runs for s in r["stages"].values())
        row["peak_rss_by_stage"] = {k: max(r["stages"][k]["peak_rss"] for r in runs) for k in runs[0]["stages"]}
        row["image_sha256"] = _digest(png)
    return row


def measure(runner: str, bundle: str, prompt: str, seed: int, work: Path, policies, caches, repeat: int,
            python: bool) -> list[dict]:
    name = Path(bundle).name
    rows = []
    cache = work / f"{name}-cache"
    if "cached" in caches:  # the first process with a cache packs and writes; the cases below map
        cache.mkdir()
        primed = run_case(runner, bundle, prompt, seed, work / f"{name}-prime.png", "low", cache, 1)
        rows.append(dict(primed, case="cache_write",
                         cache_bytes=sum(f.stat().st_size for f in cache.iterdir())))
    for kind in caches:
        for policy in policies:
            row = run_case(runner, bundle, prompt, seed, work / f"{name}-{policy}-{kind}.png", policy,
                           cache if kind == "cached" else None, repeat)
            rows.append(dict(row, case=f"{policy}{'+cache' if kind == 'cached' else ''}"))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), file=sys.stderr, flush=True)
    if python:
        for policy in [p for p in policies if p != "fast"]:
            png = work / f"{name}-{policy}-python.png"
            proc = _child([sys.executable, "-m", "flash_edge.cli.generate", "--bundle", bundle, "--backend",
                           "executorch", "--memory", policy, "--prompt", prompt, "--seed", str(seed), "--out",
                           str(png), "--quiet"])
            rows.append({"case": f"python-{policy}", "memory": policy, "process": proc,
                         **({"image_sha256": _digest(png)} if proc["returncode"] == 0 else {})})
    fast = next((r for r in rows if r.get("case") == "fast" and "per_image_s" in r), None)
    for r in rows:
        r["bundle"] = bundle
        if fast and "per_image_s" in r and r["case"] != "cache_write":
            r["vs_fast"] = round(r["per_image_s"] / fast["per_image_s"], 4)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_runner", description=__doc__.split("\n")[0])
    p.add_argument("--runner", default="build/native/flash-edge-run")
    p.add_argument("--bundle", action="append", required=True)
    p.add_argument("--prompt-file", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--cache", nargs="+", default=["none", "cached"], choices=("none", "cached"),
                   help="without the weight cache, and/or with one primed by a first process")
    p.add_argument("--repeat", type=int, default=3, help="generations per process (flash-edge-run --repeat)")
    p.add_argument("--python", action="store_true", help="also the Python ExecuTorch path (flash-generate)")
    p.add_argument("--work", help="folder for the PNGs and the cache (default: the system's temporary folder)")
    p.add_argument("--out",
                   default=str(Path(__file__).parent / "results" / "sd35m-full" / "native-runner-policies.json"))
    a = p.parse_args(argv)
    prompt = Path(a.prompt_file).read_text(encoding="utf-8").strip()
    results = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "load_average_start": list(os.getloadavg()), "prompt": prompt, "seed": a.seed, "rows": []}
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        for bundle in a.bundle:
            results["rows"] += measure(a.runner, bundle, prompt, a.seed, Path(tmp), a.memory, a.cache, a.repeat,
                                       a.python)
    results["same_image_per_bundle"] = {b: len({r["image_sha256"] for r in results["rows"]
                                                if r["bundle"] == b and "image_sha256" in r}) == 1 for b in a.bundle}
    results["load_average_end"] = list(os.getloadavg())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
