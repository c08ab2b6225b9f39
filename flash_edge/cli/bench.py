"""flash-bench: latency, memory, size and quality of bundles against the PyTorch reference, with plots."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..memory import POLICIES
from .common import Progress, integer_arg, make_parser, quiet_libraries, run

PROG = "flash-bench"
OUTPUTS = ("results.json", "results.md", "latency.png", "quality.png")


def parser():
    p = make_parser(PROG, "Measure bundles (any backend) against the fp32 PyTorch reference and diffusers, in one "
                          "process: latency per component and end to end (1, 2, 4 steps, and the 40-step CFG "
                          "teacher setting), peak memory per phase, size, quality (PSNR/SSIM) and FLOP/s. Writes "
                          + ", ".join(OUTPUTS) + " into --out.",
                    "flash-bench --bundle bundles/tiny-torch --bundle bundles/tiny-onnx --out bench/ --repeats 5")
    p.add_argument("--bundle", action="append", required=True, help="a bundle directory (repeat for several)")
    p.add_argument("--out", required=True, help="directory for the results (created; files in it are replaced)")
    p.add_argument("--repeats", type=integer_arg, default=3, help="measured runs per timing, after the warm-up "
                   "(default 3)")
    p.add_argument("--warmup", type=integer_arg, default=1, help="unmeasured runs before each timing (default 1; "
                   "2 for real-size ONNX bundles, whose sessions settle after two runs)")
    p.add_argument("--height", type=integer_arg, help="expected image height: every bundle must have it")
    p.add_argument("--width", type=integer_arg, help="expected image width: every bundle must have it")
    p.add_argument("--backend", action="append", help="backend for every bundle: auto (default), a registered "
                   "one, or per component (executorch,vae_decoder=openvino); repeat it once per --bundle, in order, "
                   "to run each bundle on its own")
    p.add_argument("--model", help="the bundles' source model ('tiny' or a diffusers folder), when the path in "
                   "their manifest is not on this machine")
    p.add_argument("--prompts", help="a text file with the quality prompts, one per line (default: 8 built in, in "
                   "the shapes domain for bundles of tiny; the first is also the latency prompt)")
    p.add_argument("--threads", type=integer_arg, help="CPU threads for every backend and the reference "
                   "(default: each library's own)")
    p.add_argument("--teacher", choices=("measure", "estimate"), default="measure",
                   help="run the 40-step CFG teacher setting, or estimate it from component times (default measure)")
    p.add_argument("--no-diffusers", dest="diffusers", action="store_false",
                   help="skip the diffusers StableDiffusion3Pipeline baseline")
    p.add_argument("--memory", dest="memory_policies", nargs="+", choices=POLICIES,
                   default=["fast"], help="memory policies to measure each bundle under, in the benchmark and the "
                   "memory probe (default fast; several give one row each, compared with the first)")
    p.add_argument("--no-memory-probe", "--no-memory", dest="memory", action="store_false",
                   help="skip the fresh-process cold-load and peak-memory probe")
    p.add_argument("--e2e-steps", type=integer_arg, nargs="+", default=[1, 2, 4], metavar="N",
                   help="step counts timed end to end (default 1 2 4; each bundle's own count is always timed)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _read_prompts(path: str) -> tuple[str, ...]:
    from ..errors import InvalidInput
    from ..tokenization import check_prompt

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read --prompts {path}: {e}") from None
    prompts = tuple(check_prompt(line.strip()) for line in lines if line.strip())
    if not prompts:
        raise InvalidInput(f"--prompts {path} holds no prompt")
    return prompts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)

    def body():
        from ..errors import InvalidInput

        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise InvalidInput(f"--out {out} exists and is not a directory")
        quiet_libraries()
        from ..bench.plots import latency_plot, quality_plot
        from ..bench.report import write_json, write_markdown
        from ..bench.runner import Options, run_bench

        say = Progress(not args.quiet)
        prompts = _read_prompts(args.prompts) if args.prompts else None
        opts = Options(bundles=args.bundle, repeats=args.repeats, warmup=args.warmup, height=args.height,
                       width=args.width, backend=tuple(args.backend or ["auto"]), model=args.model,
                       teacher=args.teacher, diffusers=args.diffusers, memory=args.memory, threads=args.threads,
                       memory_policies=tuple(dict.fromkeys(args.memory_policies)),
                       e2e_steps=tuple(sorted(set(args.e2e_steps))),
                       **({"prompts": prompts} if prompts else {}), command=shlex.join([PROG, *argv]))
        results = run_bench(opts, say)
        out.mkdir(parents=True, exist_ok=True)
        write_json(results, out / "results.json")
        write_markdown(results, out / "results.md")
        latency_plot(results, out / "latency.png")
        quality_plot(results, out / "quality.png")
        say(f"wrote {', '.join(str(out / n) for n in OUTPUTS)}")

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
