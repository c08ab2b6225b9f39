"""One bundle under one memory policy in a fresh process: three generations of the same prompt and seed (or,
with ``--batch N``, three ``generate_many`` calls of N seeds, timed per image), each one's end-to-end seconds
and phases, the whole process's peak RSS (from the OS: ``getrusage``) and a hash of the last image (policies
that draw the same picture share it). For comparing policies and ONNX Runtime's pre-packing at
real size without flash-bench's full run:

    python -m benchmarks.policy_probe BUNDLE low [--prepack 0|1] >> probe.jsonl
    python -m benchmarks.policy_probe BUNDLE low --backend openvino --option cache_dir=/data/ov-cache >> probe.jsonl

Run one process per case, with nothing else on the machine. The first generation includes ONNX Runtime's
settling runs; ``low`` reloads every component in each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

PROMPT = "a photo of a cat sitting in a green field"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policy_probe", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("policy")
    p.add_argument("--prepack", choices=("0", "1"), help="ONNX: the backend's prepack option (default: the policy's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="images per generate_many call (stage by stage); each run's "
                   "e2e_s is then the call's seconds divided by this")
    p.add_argument("--backend", default="auto", help="a backend, or per component: executorch,vae_decoder=openvino")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend option, as a string (e.g. cache_dir=DIR, inference_precision=f32)")
    a = p.parse_args(argv)
    from flash_edge.bench.measure import lifetime_peak_rss
    from flash_edge.pipeline import FlashPipeline
    from flash_edge.runtimes import parse_choice

    extra = {"prepack": a.prepack == "1"} if a.prepack else {}
    extra.update(o.split("=", 1) for o in a.option)
    t0 = time.perf_counter()
    pipe = FlashPipeline.from_bundle(a.bundle, **parse_choice(a.backend), memory=a.policy, **extra)
    load = time.perf_counter() - t0
    runs = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        if a.batch > 1:  # the same prompt, seeds 0..batch-1; the hash below is seed 0's picture either way
            image = pipe.generate_many([(PROMPT, seed) for seed in range(a.batch)])[0]
        else:
            image = pipe.generate(PROMPT, seed=0)
        took = (time.perf_counter() - t0) / a.batch
        runs.append({"e2e_s": round(took, 2), **{k: round(v / a.batch, 2) for k, v in pipe.timings.items()}})
    print(json.dumps({"bundle": os.path.basename(os.path.normpath(a.bundle)), "policy": a.policy, "batch": a.batch,
                      "backends": sorted(set(pipe.info["backends"].values())), **extra,
                      "load_s": round(load, 2), "runs": runs, "peak_rss_bytes": lifetime_peak_rss(),
                      "image_sha256": hashlib.sha256(image.tobytes()).hexdigest()[:16],
                      "load_average": list(os.getloadavg())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
