"""Scenario ``tiny``: the CI-sized smoke run. Exports the built-in ``tiny`` model for every registered target
and precision that exports here, then runs ``flash-bench`` over all of them (one repeat) with the
PyTorch reference and diffusers' pipeline as baselines. It checks that the report is complete and
well-formed, not speed: the tiny model's times say nothing about real models.

  nice -n 10 .venv/bin/python -m benchmarks.tiny --out /tmp/tiny-bench [--targets torch onnx] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export_all(dest: Path, targets: list[str] | None = None, precisions: list[str] | None = None,
               say=print) -> tuple[list[Path], dict[str, str]]:
    """One tiny bundle per (target, precision) that exports here; the others with the reason. A bundle whose
    backend cannot run here (Core ML off macOS) is still exported: flash-bench reports its size and parity."""
    from flash_edge.errors import FlashError
    from flash_edge.export import REGISTRY, export_bundle, exporter_class

    bundles, skipped = [], {}
    for target in REGISTRY:
        if targets and target not in targets:
            continue
        cls = exporter_class(target)
        reason = cls.unavailable_reason()
        for precision in cls.precisions:
            if precisions and precision not in precisions:
                continue
            name = f"tiny-{target}-{precision}"
            if reason:
                skipped[name] = reason
                continue
            out = dest / name
            if (out / "manifest.json").is_file():
                bundles.append(out)
                continue
            say(f"exporting {name}")
            try:
                bundles.append(export_bundle("tiny", target, out, precision))
            except FlashError as e:  # e.g. a precision that fails its parity gate: reported, not benchmarked
                skipped[name] = str(e)
    return bundles, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tiny", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the bundles (out/bundles) and the report (out/report)")
    p.add_argument("--targets", nargs="+", help="only these targets (default: every registered one)")
    p.add_argument("--precisions", nargs="+", help="only these precisions")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    from flash_edge.cli.bench import main as bench
    from flash_edge.cli.common import quiet_libraries

    quiet_libraries()
    out = Path(args.out)
    bundles, skipped = export_all(out / "bundles", args.targets, args.precisions,
                                  say=lambda m: print(m, file=sys.stderr, flush=True))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    argv = [a for b in bundles for a in ("--bundle", str(b))]
    return bench([*argv, "--out", str(out / "report"), "--repeats", str(args.repeats)])


if __name__ == "__main__":
    sys.exit(main())
