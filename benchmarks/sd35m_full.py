"""Scenario ``sd35m-full``: the whole SD3.5-Medium architecture at real size (random weights from a fixed
seed: CLIP-L, CLIP-G, the 2.24B MMDiT-X transformer, the real 16-channel VAE decoder; no T5) at 512^2, 4 steps,
end to end per target and precision, with peak RSS per phase. Run by hand, not in CI: it needs ~10+ GB of
memory and tens of minutes per bundle on a 2-core CPU.

  nice -n 10 .venv/bin/python -m benchmarks.sd35m_full --work /data/sd35m [--targets onnx executorch]
      [--precisions int8 fp32] [--repeats 2] [--memory fast low] [--out benchmarks/results/sd35m-full]
      [--component-target vae_decoder=onnx:fp32] [--backend executorch,vae_decoder=openvino auto]

1. builds the model folder (``--work``/model, ~12.5 GB fp32 on disk), one part at a time to bound memory;
2. exports one bundle per (target, precision) whose backend runs here, at 512^2 with 4 steps
   (``flash_edge.export.export_bundle``: the same path as ``flash-export``, parity gate included);
3. runs ``flash-bench`` over them with the teacher setting estimated from component times (80 transformer
   calls would take an hour each) and the PyTorch fp32 reference and diffusers' pipeline as baselines.
For scale on this machine kind: stable-diffusion.cpp q8_0 took 37 s/step, 75 s VAE decode, 254 s for 4 steps,
5.9 GB peak; diffusers fp32 eager 18-23 s/step. Targets: 4 steps end to end <= 38 s, peak RSS <= 3.5 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flash_edge.memory import POLICIES

from .configs import CLIP_G, CLIP_L, TRANSFORMERS, VAE  # the published configurations, in one place

SEED = 0
SHIFT = 3.0
TRANSFORMER = TRANSFORMERS["sd35-medium"]
PARTS = {  # folder -> (library, class)
    "transformer": ("diffusers", "SD3Transformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
}


def build(part: str, token_ids: dict | None = None):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    if part == "transformer":
        return SD3Transformer2DModel(**TRANSFORMER)
    if part == "vae":
        return AutoencoderKL(**VAE)
    clip = CLIP_L if part == "text_encoder" else CLIP_G
    ids = token_ids or {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}  # the tokenizer's, when built
    return CLIPTextModelWithProjection(CLIPTextConfig(**clip, **ids))


def parameter_counts() -> dict[str, int]:
    """Parameters of each part, built on the meta device (no memory, seconds)."""
    import torch

    out = {}
    with torch.device("meta"):
        for part in PARTS:
            m = build(part)
            out[part] = sum(p.numel() for p in m.parameters())
            if part == "vae":
                out["vae_decoder"] = sum(p.numel() for p in m.decoder.parameters())
    return out


def build_folder(dest: Path, say=print) -> Path:
    """The diffusers folder, one part at a time (peak memory = the largest part, the 9 GB transformer)."""
    import gc

    import diffusers
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from flash_edge.models.tokenizer_files import save_clip_tokenizer

    if (dest / "model_index.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
             "text_encoder_3": [None, None], "tokenizer_3": [None, None]}
    ids = {}
    for sub, encoder, pad in (("tokenizer", "text_encoder", None), ("tokenizer_2", "text_encoder_2", "!")):
        tok = save_clip_tokenizer(dest / sub, **({"pad_token": pad} if pad else {}))  # the shipped word list
        ids[encoder] = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                        "pad_token_id": tok.pad_token_id}
        index[sub] = ["transformers", "CLIPTokenizer"]
    for i, part in enumerate(PARTS):
        say(f"building {part} (random weights, seed {SEED + i})")
        torch.manual_seed(SEED + i)
        module = build(part, ids.get(part))
        module.save_pretrained(str(dest / part), safe_serialization=True)
        index[part] = list(PARTS[part])
        del module
        gc.collect()
    FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(str(dest / "scheduler"))
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd35m_full", description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the model and the bundles (~25 GB free)")
    p.add_argument("--targets", nargs="+", help="exporter targets (default: every registered one that runs here)")
    p.add_argument("--precisions", nargs="+", help="only these precisions")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="flash-bench --warmup (ONNX Runtime settles after two runs)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sd35m-full"))
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers' pipeline baseline")
    p.add_argument("--prompts", help="flash-bench --prompts: a file of quality prompts (default: its 8)")
    p.add_argument("--memory", nargs="+", default=["fast"], choices=POLICIES,
                   help="memory policies to measure each bundle under (flash-bench --memory)")
    p.add_argument("--e2e-steps", nargs="+", default=["4"], help="flash-bench --e2e-steps (default: 4 only)")
    p.add_argument("--decode-tile", type=int, help="export with flash-export --decode-tile PIXELS (overlap: a third)")
    p.add_argument("--external-data", action="store_true",
                   help="ONNX: flash-export --external-data always (mapped weights; 'low' then keeps pre-packing)")
    p.add_argument("--int8-weights", choices=("u8", "s8"),
                   help="ONNX int8: flash-export --int8-weights (s8: for CPUs with VNNI; named in the bundle's folder)")
    p.add_argument("--component-target", action="append", metavar="COMPONENT=TARGET[:PRECISION]",
                   help="flash-export --component-target (a mixed bundle, named in its folder), e.g. "
                   "vae_decoder=onnx:fp32")
    p.add_argument("--backend", nargs="+", default=["auto"], metavar="CHOICE",
                   help="flash-bench --backend choices: each bundle is measured under each, e.g. "
                   "executorch,vae_decoder=openvino auto (default auto)")
    args = p.parse_args(argv)
    from flash_edge.cli.bench import main as bench
    from flash_edge.cli.common import quiet_libraries
    from flash_edge.errors import FlashError
    from flash_edge.export import REGISTRY, export_bundle, exporter_class
    from flash_edge.runtimes import backend_class

    quiet_libraries()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(args.work)
    model = build_folder(work / "model", say)
    bundles = []
    for target in args.targets or list(REGISTRY):
        cls = exporter_class(target)
        reason = cls.unavailable_reason() or backend_class(cls.backend).unavailable_reason()
        for precision in cls.precisions:
            if args.precisions and precision not in args.precisions:
                continue
            if reason:
                say(f"skipping {target} {precision}: {reason}")
                continue
            options = {}
            if args.int8_weights and (target, precision) == ("onnx", "int8"):
                options["int8_weights"] = args.int8_weights
            if args.external_data and target == "onnx":
                options["external_data"] = "always"
            tile = args.decode_tile
            out = work / (f"sd35m-{target}-{precision}-{args.size}" + (f"-tile{tile}" if tile else "")
                          + (f"-{args.int8_weights}" if "int8_weights" in options else "")
                          + ("-ext" if "external_data" in options else "")
                          + "".join(f"-{c.replace('=', '-').replace(':', '-')}" for c in args.component_target or ()))
            if not (out / "manifest.json").is_file():
                say(f"exporting {out.name}")
                try:
                    export_bundle(model, target, out, precision, height=args.size, width=args.size, steps=4,
                                  decode_tile=tile, decode_overlap=tile // 3 // 8 * 8 if tile else None, progress=say,
                                  component_targets=args.component_target, **options)
                except FlashError as e:
                    say(f"  {out.name} not benchmarked: {e}")
                    continue
            bundles.append(out)
    if not bundles:
        say("no bundle could be exported here")
        return 2
    argv = [a for b in bundles for choice in args.backend for a in ("--bundle", str(b), "--backend", choice)]
    return bench([*argv, "--out", args.out, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
                  "--model", str(model),
                  "--teacher", "estimate", "--memory", *args.memory, "--e2e-steps", *args.e2e_steps, *(["--prompts", args.prompts] if args.prompts else []),
                  *(["--no-diffusers"] if args.no_diffusers else [])])


if __name__ == "__main__":
    sys.exit(main())
