"""The native runner (apps/cpp, ``flash-edge-run``) beside the Python ExecuTorch path on the same bundles, one
generation each in a fresh process: seconds and peak RSS per stage (the runner's ``--stats``: VmHWM reset at each
stage) and for the whole process (``/usr/bin/time``-style ``ru_maxrss`` of the child), and whether both wrote the
same PNG (whole-process peak: the largest stage's for the runner, ``wait4``'s ``ru_maxrss`` for Python). Run it alone on the machine; it records the load average.

  .venv/bin/python -m benchmarks.native_runner --runner build/native/flash-edge-run \\
      --bundle /data/sd35m/sd35m-executorch-int8-512 [--bundle ...] --prompt-file prompt.txt \\
      [--out benchmarks/results/sd35m-full/native-runner.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(cmd: list[str]) -> dict:
    """Run ``cmd`` in a fresh process: wall seconds, exit status, the child's own peak RSS (``wait4``'s
    ``ru_maxrss``, bytes), its stderr's last lines."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
    return {"returncode": proc.returncode, "seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "stderr_tail": tail}


def measure(runner: str, bundle: str, prompt: str, seed: int, work: Path, stream: bool, python: bool) -> dict:
    import numpy as np
    from PIL import Image

    name = Path(bundle).name + ("-stream" if stream else "")
    native_png, stats = work / f"{name}-native.png", work / f"{name}-stats.json"
    cmd = [runner, "--bundle", bundle, "--prompt", prompt, "--seed", str(seed), "--out", str(native_png),
           "--stats", str(stats)] + (["--stream-chunks"] if stream else [])
    row = {"bundle": bundle, "stream_chunks": stream, "native": _child(cmd)}
    if row["native"]["returncode"] == 0:
        row["native"]["stages"] = json.loads(stats.read_text())["stages"]
        # the runner resets VmHWM at each stage, which resets the kernel's ru_maxrss too: the whole generation's
        # peak is the largest stage's
        row["native"]["peak_rss"] = max(s["peak_rss"] for s in row["native"]["stages"].values())
    if python:
        py_png = work / f"{name}-python.png"
        row["python"] = _child([sys.executable, "-m", "flash_edge.cli.generate", "--bundle", bundle, "--backend",
                                "executorch", "--memory", "stream" if stream else "low", "--prompt", prompt,
                                "--seed", str(seed), "--out", str(py_png), "--quiet"])
        if row["native"]["returncode"] == 0 and row["python"]["returncode"] == 0:
            a = np.asarray(Image.open(native_png).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(py_png).convert("RGB"), dtype=np.int16)
            row["same_png"] = bool(np.array_equal(a, b))
            row["max_abs_diff"] = int(np.abs(a - b).max())
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runner", default="build/native/flash-edge-run")
    p.add_argument("--bundle", action="append", required=True)
    p.add_argument("--prompt-file", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="also run each bundle with --stream-chunks")
    p.add_argument("--no-python", action="store_true", help="skip the Python ExecuTorch path")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sd35m-full" / "native-runner.json"))
    a = p.parse_args(argv)
    prompt = Path(a.prompt_file).read_text(encoding="utf-8").strip()
    results = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "load_average_start": list(os.getloadavg()), "prompt": prompt, "seed": a.seed, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in a.bundle:
            for stream in (False, True) if a.stream else (False,):
                row = measure(a.runner, bundle, prompt, a.seed, Path(tmp), stream, not a.no_python)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    results["load_average_end"] = list(os.getloadavg())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
