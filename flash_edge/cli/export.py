"""flash-export: a model -> a self-describing bundle for one target."""

from __future__ import annotations

import argparse

import sys

from .common import Progress, integer_arg, make_parser, quiet_libraries, run

PROG = "flash-export"


def parser():
    p = make_parser(PROG, "Export an SD3-family model (default: the built-in 'tiny') to a bundle for one target.",
                    "flash-export --target onnx --model tiny --out bundles/tiny-onnx")
    classes = _exporter_classes()
    p.add_argument("--target", required=True, help=f"artifact format: {', '.join(classes)} (export.REGISTRY)")
    p.add_argument("--model", default="tiny", help="'tiny' (built in), a diffusers-format SD3 folder, or an SD3 "
                   "single-file .safetensors checkpoint (original/ComfyUI layout)")
    p.add_argument("--config", help="with a single-file --model: the diffusers folder with its configs, tokenizers and "
                   "scheduler (default: the checkpoint's own folder)")
    p.add_argument("--out", required=True, help="bundle directory to write (must not exist, unless --force)")
    p.add_argument("--precision", help="per target (default first): " + "; ".join(
        f"{t} {'|'.join([c.default_precision] + [x for x in c.precisions if x != c.default_precision])}"
        for t, c in classes.items()))
    p.add_argument("--steps", type=integer_arg, help="sampler steps baked into the bundle (1-8; default: the model's "
                   "own, 4 for tiny, or as many as --sigmas make)")
    p.add_argument("--sigmas", type=float, nargs="+", help="explicit sigmas (the student's schedule) instead of "
                   "the model scheduler's shift; a final 0 is appended")
    p.add_argument("--rule", choices=("euler", "renoise"), default="euler", help="sampler step rule")
    p.add_argument("--height", type=integer_arg, help="image height (default: the model's native size)")
    p.add_argument("--width", type=integer_arg, help="image width (default: the model's native size)")
    p.add_argument("--decode-tile", type=integer_arg, metavar="PIXELS",
                   help="decode in overlapping square tiles of this many pixels (a multiple of the VAE factor, 8): "
                   "the decoder's memory follows the tile, not the image; costs time and some fidelity, "
                   "measured into the manifest's parity.decode_tiling (default: one pass)")
    p.add_argument("--decode-overlap", type=int, metavar="PIXELS",
                   help="with --decode-tile: pixels tiles overlap by (default: a quarter of the tile)")
    t5 = p.add_mutually_exclusive_group()
    t5.add_argument("--t5", dest="t5", action="store_true", help="export the T5 encoder too")
    t5.add_argument("--no-t5", dest="t5", action="store_false", help="drop T5; zeros of its shape (default)")
    p.add_argument("--t5-tokens", type=integer_arg, default=None,
                   help="T5 token slots in the text sequence (default: the model's flash_edge.json, else 256 as "
                   "diffusers; 0 drops them: 77 tokens)")
    p.add_argument("--no-fold", dest="fold_slots", action="store_false",
                   help="run T5's zero slots as that many tokens in the transformer (default: without T5 they are "
                   "folded into one token weighted by their count: the same result, about a sixth less transformer "
                   "work at 512x512; flash_edge.folding)")
    p.add_argument("--component-target", action="append", metavar="COMPONENT=TARGET[:PRECISION]",
                   help="export one component for another target, at that target's defaults (repeatable), e.g. "
                   "vae_decoder=onnx:fp32 beside an executorch int8 transformer; the runtime picks a backend per "
                   "component")
    p.add_argument("--skip-parity", action="store_true", help="write the bundle even if it fails the parity gate "
                   "(marked loudly in the manifest)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    flags = target_flags()
    groups: dict[tuple[str, ...], list[str]] = {}  # a flag several targets share: once, in a group naming them
    for flag, (_, targets, _) in flags.items():
        groups.setdefault(targets, []).append(flag)
    for targets, names in groups.items():
        group = p.add_argument_group(f"{' / '.join(targets)} options")
        for flag in names:  # absent unless given: another target's flag is an error even at its default
            group.add_argument(flag, **{**flags[flag][2], "default": argparse.SUPPRESS})
    return p


def _exporter_classes() -> dict:
    """Every registered exporter class (their modules import their heavy packages lazily)."""
    from ..export import REGISTRY, exporter_class

    return {t: exporter_class(t) for t in REGISTRY}


def target_flags() -> dict[str, tuple[str, tuple[str, ...], dict]]:
    """Every target option: flag -> (its argparse dest, the targets that take it, its argparse keywords)."""
    out: dict[str, tuple[str, tuple[str, ...], dict]] = {}
    for target, cls in _exporter_classes().items():
        for flag, kwargs in cls.cli_options.items():
            dest = kwargs.get("dest") or flag.lstrip("-").replace("-", "_")
            _, targets, first = out.get(flag, (dest, (), kwargs))  # a shared flag: the first target's keywords
            out[flag] = (dest, tuple(sorted((*targets, target))), first)
    return out


def target_options(args, target: str) -> dict:
    """The values of ``target``'s own options (their defaults where not given); another target's option given
    at all is an error."""
    from ..errors import InvalidInput
    from ..export import exporter_class

    own = exporter_class(target).cli_options  # an unknown target fails here, with the list of targets
    chosen = {}
    for flag, (dest, targets, kwargs) in target_flags().items():
        if flag in own:
            chosen[dest] = getattr(args, dest, own[flag].get("default"))
        elif hasattr(args, dest):
            raise InvalidInput(f"{flag} applies to --target {' / '.join(targets)}, not {target}")
    return chosen


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def body():
        quiet_libraries()
        from ..export import export_bundle

        export_bundle(args.model, args.target, args.out, args.precision, config=args.config,
                      height=args.height, width=args.width, decode_tile=args.decode_tile,
                      decode_overlap=args.decode_overlap, component_targets=args.component_target,
                      steps=args.steps, rule=args.rule, sigmas=args.sigmas, t5=args.t5, t5_tokens=args.t5_tokens,
                      force=args.force, skip_parity=args.skip_parity, progress=Progress(not args.quiet),
                      fold_slots=args.fold_slots, **target_options(args, args.target))

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
