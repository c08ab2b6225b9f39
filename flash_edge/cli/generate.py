"""flash-generate: prompt -> PNG, from a bundle (any backend) or straight from a model (PyTorch)."""

from __future__ import annotations

import sys

from ..memory import POLICIES
from .common import Progress, integer_arg, make_parser, quiet_libraries, run

PROG = "flash-generate"


def parser():
    p = make_parser(PROG, "Generate an image from a bundle or a model.",
                    'flash-generate --bundle bundles/tiny-onnx --prompt "a red circle" --seed 0 --out red.png')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory written by flash-export")
    src.add_argument("--model", help="'tiny', a diffusers SD3 folder or a single-file .safetensors checkpoint, run "
                     "with the PyTorch reference")
    p.add_argument("--config", help="with a single-file --model: its diffusers config folder (default: its own folder)")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=integer_arg, default=0, help="noise seed, 0 to 2**64-1 (default 0)")
    p.add_argument("--backend", default="auto", help="auto|torch|onnx|coreml|executorch (default auto)")
    p.add_argument("--steps", type=integer_arg, help="with --model: sampler steps (1-8, default 4)")
    p.add_argument("--height", type=integer_arg, help="with --model: image height")
    p.add_argument("--width", type=integer_arg, help="with --model: image width")
    p.add_argument("--memory", choices=POLICIES, default="balanced",
                   help="with --bundle: which components are resident when (default balanced: each opened at its "
                   "stage, text encoders released after encoding; low: every component released after its stage, "
                   "for phones; stream: low, and a chunked transformer opened one chunk at a time at every step, for the "
                   "smallest phones; fast: all opened at load)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def body():
        from ..errors import InvalidInput

        from ..image import check_png_path, save_png
        from ..sampler import check_seed
        from ..tokenization import check_prompt

        say = Progress(not args.quiet)
        out = check_png_path(args.out, args.force)
        check_prompt(args.prompt)
        check_seed(args.seed)
        if args.bundle and any(v is not None for v in (args.steps, args.height, args.width)):
            raise InvalidInput("--steps/--height/--width are fixed in a bundle; export another bundle to change them")
        if args.bundle and args.config:
            raise InvalidInput("--config applies to a single-file --model, not to --bundle")
        quiet_libraries()
        from ..pipeline import FlashPipeline

        if args.bundle:
            say(f"loading bundle {args.bundle}")
            pipe = FlashPipeline.from_bundle(args.bundle, backend=args.backend, verify=not args.no_verify,
                                             memory=args.memory)
        else:
            if args.backend not in ("auto", "torch"):
                raise InvalidInput("--model runs the PyTorch reference; export a bundle to use another backend")
            say(f"loading model {args.model}")
            opts = {k: v for k, v in (("steps", args.steps), ("height", args.height), ("width", args.width))
                    if v is not None}
            pipe = FlashPipeline.from_model(args.model, config=args.config, **opts)
        image = pipe(args.prompt, seed=args.seed, on_step=lambda i, n: say(f"step {i}/{n}"))
        backends = sorted(set(pipe.info["backends"].values()))
        save_png(image, out, {"prompt": args.prompt, "seed": args.seed, "steps": pipe.spec.sampler.steps,
                              "backend": ",".join(backends), "model": pipe.info.get("model", "?"),
                              "source": args.bundle or args.model, "software": "flash-edge"})
        t = pipe.timings
        say(f"wrote {out} ({image.width}x{image.height}; encode {t['encode']:.2f}s, denoise {t['denoise']:.2f}s, "
            f"decode {t['decode']:.2f}s)")

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
