"""Seeded fuzzing of the bundle loader: random mutations of a valid manifest (deleted keys, changed types,
extreme numbers, NaN and inf, odd paths, extra keys, deep nesting), each loaded and, when it loads, run.

The pass condition is that only ``flash_edge.errors`` exceptions come out (or a finite image of the right
shape). ``tests/test_bundle_fuzz.py`` runs a few hundred cases in CI; by hand, thousands:

    python tests/manifest_fuzz.py BUNDLE --cases 3000 --seed 1 [--backend onnx]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

DEEP = "__deep_nesting__"
SILENT = "silently wrong image (non-finite or misshapen, no error)"
ODD_PATHS = ["../x", "/etc/passwd", "a/../../b", "", ".", "tokenizer/../../../etc/hosts", "C:\\x", "x\x00y",
             "transformer/", "./transformer", "..", "~/x", "//x", "tokenizer/tokenizer.json/..", "a" * 600,
             "transformer/config.json", "manifest.json", "tokenizer"]
NUMBERS = [0, -1, 1, 2, 7, 1e308, -1e308, 2**63, 2**64, 10**9, float("nan"), float("inf"), float("-inf"), 1e-300,
           0.5, 77, 256, 4096, 65536]
VALUES = [None, True, False, "x", 0, -1, 1.5, [], {}, [1, 2], {"a": 1}, "float32", [1, 16, 8, 8]]


def leaves(node, path=()):
    """Every (path, value) in a JSON tree, containers included."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))


def _set(root, path, value):
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(root, path):
    node = root
    for p in path[:-1]:
        node = node[p]
    if isinstance(node, dict):
        del node[path[-1]]
    else:
        node.pop(path[-1])


def mutate(manifest: dict, rng: random.Random) -> tuple[dict, str]:
    """One random mutation of ``manifest`` (a deep copy) and a short description of it."""
    m = copy.deepcopy(manifest)
    spots = [(p, v) for p, v in leaves(m) if p]
    kind = rng.choice(["delete", "type", "number", "path", "extra", "deep", "shape", "swap", "number", "path"])
    if kind == "number":
        spots = [(p, v) for p, v in spots if isinstance(v, (int, float)) and not isinstance(v, bool)] or spots
    if kind == "path":
        spots = [(p, v) for p, v in spots if isinstance(v, str) or (p and p[0] == "files")] or spots
    if kind == "shape":
        spots = [(p, v) for p, v in spots if "shape" in p and isinstance(v, int)] or spots
    path, value = rng.choice(spots)
    where = ".".join(map(str, path))
    if kind == "delete":
        _delete(m, path)
    elif kind == "type":
        _set(m, path, rng.choice(VALUES))
    elif kind in ("number", "shape"):
        _set(m, path, rng.choice(NUMBERS) if kind == "number" else value + rng.choice([-1, 1, 7, -value]))
    elif kind == "path":
        odd = rng.choice(ODD_PATHS)
        if path[0] == "files" and len(path) == 2:  # rename a files key
            files = m["files"]
            files[odd] = files.pop(path[1])
        else:
            _set(m, path, odd)
    elif kind == "extra":
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        target = parent if isinstance(parent, dict) else m
        target[rng.choice(["class", "chunks", "data_file", "compiled", "zzz", "auto_map", "path"])] = rng.choice(
            VALUES + ODD_PATHS[:4])
    elif kind == "deep":
        _set(m, path, DEEP)
    elif kind == "swap":
        parent = m
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, list) and len(parent) > 1:
            parent.reverse()
        else:
            _set(m, path, [value, value])
    return m, f"{kind} at {where}"


def dumps(manifest: dict) -> str:
    text = json.dumps(manifest, indent=1)  # NaN/inf are written as JSON's non-standard literals, as a hostile
    return text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)  # writer might


def run_case(bundle: Path, manifest: dict, backend: str) -> str | None:
    """Load and run ``bundle`` with ``manifest`` written into it; None if it ran (finite image of the spec's
    shape), else the name of the exception, or ``SILENT`` for a non-finite or misshapen image without error."""
    import numpy as np

    from flash_edge.errors import FlashError
    from flash_edge.pipeline import FlashPipeline

    (bundle / "manifest.json").write_text(dumps(manifest), encoding="utf-8")
    try:
        pipe = FlashPipeline.from_bundle(bundle, backend=backend, verify=False)
        image = pipe.generate("a red circle on the left", seed=0)
    except FlashError as e:
        assert "\n" not in str(e), f"a multi-line error: {e!r}"
        return f"flash_edge.{type(e).__name__}"
    except Exception as e:  # noqa: BLE001 - what the fuzz is looking for
        return f"{type(e).__module__}.{type(e).__name__}"
    if image.shape != (1, 3, pipe.spec.height, pipe.spec.width) or not np.all(np.isfinite(image)):
        return SILENT
    return None


def fuzz(bundle: Path, work: Path, cases: int, seed: int, backend: str, say=lambda *_: None) -> dict:
    """Run ``cases`` mutations of ``bundle``'s manifest on a hard-linked copy at ``work``. Returns counts of
    outcomes (exception type, or "ran") and the first few foreign exceptions with their mutation."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(bundle, work, copy_function=os.link)
    (work / "manifest.json").unlink()  # a fresh file per case: never write through a hard link
    original = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    rng = random.Random(seed)
    counts: Counter = Counter()
    foreign = []
    for i in range(cases):
        manifest, what = mutate(original, rng)
        outcome = run_case(work, manifest, backend) or "ran"
        counts[outcome] += 1
        if outcome != "ran" and not outcome.startswith("flash_edge."):
            foreign.append(f"case {i} ({what}): {outcome}")
        if i % 100 == 99:
            say(f"{i + 1}/{cases}: {dict(counts)}")
    return {"cases": cases, "seed": seed, "backend": backend, "outcomes": dict(counts.most_common()),
            "foreign": foreign}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--work", type=Path, default=Path("/tmp/flash-edge-fuzz"))
    a = p.parse_args(argv)
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    result = fuzz(a.bundle, a.work, a.cases, a.seed, a.backend, say=lambda m: print(m, file=sys.stderr))
    print(json.dumps({**result, "foreign": result["foreign"][:40], "foreign_count": len(result["foreign"])},
                     indent=1, default=lambda x: x if not isinstance(x, float) or math.isfinite(x) else str(x)))
    return 0 if not result["foreign"] else 1


if __name__ == "__main__":
    sys.exit(main())
