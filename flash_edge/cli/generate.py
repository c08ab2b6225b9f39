"""flash-generate: prompt -> PNG, from a bundle (any backend) or straight from a model (PyTorch)."""

from __future__ import annotations

import sys

from ..memory import POLICIES
from .common import Progress, integer_arg, make_parser, quiet_libraries, run

PROG = "flash-generate"
STAGED_GROUP = 8  # images per stage-by-stage group under low/stream (their latents and pictures stay in memory)


def parser():
    p = make_parser(PROG, "Generate an image from a bundle or a model.",
                    'flash-generate --bundle bundles/tiny-onnx --prompt "a red circle" --seed 0 --out red.png')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory written by flash-export")
    src.add_argument("--model", help="'tiny', a diffusers SD3 folder or a single-file .safetensors checkpoint, run "
                     "with the PyTorch reference")
    p.add_argument("--config", help="with a single-file --model: its diffusers config folder (default: its own folder)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="what to draw")
    what.add_argument("--prompts", metavar="FILE", help="a UTF-8 file of prompts, one per line ('#' comments)")
    p.add_argument("--out", required=True, help="PNG file to write; with several pictures, STEM-sSEED.png (one "
                   "prompt) or STEM-pN-sSEED.png beside it")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=integer_arg, default=0, help="noise seed, 0 to 2**64-1 (default 0)")
    seeds.add_argument("--seeds", help="several seeds: ranges and lists, e.g. 0-7 or 1,5,9")
    p.add_argument("--num-images", type=integer_arg, help="N pictures per prompt, seeds --seed .. --seed+N-1")
    p.add_argument("--grid", metavar="FILE.png", help="also write a contact sheet: a row per prompt, a column "
                   "per seed")
    p.add_argument("--threads", type=integer_arg, help="CPU threads for the backends (default: theirs)")
    p.add_argument("--backend", default="auto", help="auto|torch|onnx|openvino|coreml|executorch (default auto; "
                   "openvino runs ONNX artifacts and is used only when named), or per component: "
                   "COMPONENT=BACKEND pairs after an optional default, e.g. executorch,vae_decoder=openvino")
    p.add_argument("--steps", type=integer_arg, help="with --model: sampler steps (default: the model's own, 4 for "
                   "tiny; a teacher's 40 runs too)")
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
        from ..batch import contact_sheet, output_paths, read_prompts, seeds_from
        from ..errors import InvalidInput
        from ..image import check_png_path, save_png, to_pil
        from ..tokenization import check_prompt

        say = Progress(not args.quiet)
        prompts = read_prompts(args.prompts) if args.prompts else [check_prompt(args.prompt)]
        seeds = seeds_from(args.seed, args.seeds, args.num_images)
        paths = output_paths(args.out, len(prompts), seeds)
        for path in [p for row in paths for p in row] + ([args.grid] if args.grid else []):
            check_png_path(path, args.force)
        if args.threads is not None and args.threads < 1:
            raise InvalidInput(f"--threads must be a positive integer, got {args.threads}")
        if args.bundle and any(v is not None for v in (args.steps, args.height, args.width)):
            raise InvalidInput("--steps/--height/--width are fixed in a bundle; export another bundle to change them")
        if args.bundle and args.config:
            raise InvalidInput("--config applies to a single-file --model, not to --bundle")
        quiet_libraries()
        pipe = load(args, say)
        backends = pipe.info["backends"]
        say("backends: " + ", ".join(f"{c} {b}" for c, b in backends.items()))
        rows, single = [], len(prompts) * len(seeds) == 1
        # under low/stream, a prompt's seeds go stage by stage (each component opened once per group, not per image)
        group = STAGED_GROUP if pipe.info.get("memory") in ("low", "stream") else 1

        def save(image, prompt, seed, path, timings):
            save_png(image, path, {"prompt": prompt, "seed": seed, "steps": pipe.spec.sampler.steps,
                                   "backend": ",".join(sorted(set(backends.values()))),
                                   "model": pipe.info.get("model", "?"), "source": args.bundle or args.model,
                                   "software": "flash-edge"})
            say(f"wrote {path} ({image.width}x{image.height}; {timings})")
            return image

        for prompt, row in zip(prompts, paths):
            rows.append([])
            pairs = list(zip(seeds, row))
            for start in range(0, len(pairs), group):
                part = pairs[start:start + group]
                if len(part) == 1:
                    seed, path = part[0]
                    image = pipe(prompt, seed=seed, on_step=(lambda i, n: say(f"step {i}/{n}")) if single else None)
                    t = pipe.timings
                    rows[-1].append(save(image, prompt, seed, path, f"encode {t['encode']:.2f}s, denoise "
                                                                    f"{t['denoise']:.2f}s, decode {t['decode']:.2f}s"))
                    continue
                images = pipe.generate_many([(prompt, seed) for seed, _ in part])
                t = pipe.timings
                each = (f"{len(part)} images stage by stage: encode {t['encode']:.2f}s, denoise {t['denoise']:.2f}s, "
                        f"decode {t['decode']:.2f}s in all")
                rows[-1] += [save(to_pil(a), prompt, seed, path, each) for a, (seed, path) in zip(images, part)]
        if args.grid:
            save_png(contact_sheet(rows), args.grid, {"prompts": " | ".join(prompts),
                                                       "seeds": ",".join(map(str, seeds)), "software": "flash-edge"})
            say(f"wrote {args.grid} (contact sheet: {len(prompts)} prompt(s) x {len(seeds)} seed(s))")

    return run(PROG, body)


def load(args, say):
    """The pipeline, loaded once for the whole batch; says how long loading took."""
    import time

    from ..errors import InvalidInput
    from ..pipeline import FlashPipeline

    t0 = time.perf_counter()
    threads = {"threads": args.threads} if args.threads else {}
    if args.bundle:
        say(f"loading bundle {args.bundle}")
        from ..runtimes import parse_choice

        pipe = FlashPipeline.from_bundle(args.bundle, verify=not args.no_verify, memory=args.memory,
                                         **parse_choice(args.backend), **threads)
    else:
        if args.backend not in ("auto", "torch"):
            raise InvalidInput("--model runs the PyTorch reference; export a bundle to use another backend")
        say(f"loading model {args.model}")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        opts = {k: v for k, v in (("steps", args.steps), ("height", args.height), ("width", args.width))
                if v is not None}
        pipe = FlashPipeline.from_model(args.model, config=args.config, **opts)
    policy = pipe.info.get("memory", "fast")
    took = f"{time.perf_counter() - t0:.2f}s"
    say(f"loaded in {took}" if policy == "fast" else
        f"checked in {took}; components open at their stage (memory policy {policy}: load time counts in the phases)")
    return pipe


if __name__ == "__main__":
    sys.exit(main())
