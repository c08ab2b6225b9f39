"""The one training command, stage by stage, resumable, single- or multi-process.

    python -m flash_edge.distill train --out out/distill --seed 0
    torchrun --nproc_per_node 2 -m flash_edge.distill train --out out/distill --seed 0   # same, 2 processes

Stages (``--stages``, default all, in this order; a stage whose output folder exists is loaded, not redone):
``vae`` -> ``vae/``; ``teacher`` -> ``teacher/`` (+ ``teacher/train_state.pt``: an interrupted run resumes);
``pairs`` -> ``pairs-{k}step.pt``; ``trajectory`` -> ``student-{k}step-trajectory/``; ``dmd`` ->
``student-{k}step-dmd[-random]/``; ``split`` -> ``student-{k}step-split/`` (+ ``split-{k}step.json``: the merge ratio
chosen on mini-GenEval). Every folder is a diffusers folder the SDK loads. Losses go to ``log.jsonl``.

    python -m flash_edge.distill eval --model out/distill/teacher --steps 40 --guidance 4
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch

STAGES = ("vae", "teacher", "pairs", "trajectory", "dmd", "split")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flash_edge.distill", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the teacher and distil the students")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--stages", default=",".join(STAGES))
    t.add_argument("--preset", choices=("default", "test"), default="default", help="'test': the smallest family")
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--student-steps", type=int, default=4)
    t.add_argument("--train-images", type=int, default=20000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--vae-steps", type=int, default=3000)
    t.add_argument("--teacher-steps", type=int, default=30000)
    t.add_argument("--teacher-lr", type=float, default=3e-4)
    t.add_argument("--teacher-ema", type=float, default=0.999,
                   help="EMA decay of the teacher's weights, which the saved teacher holds (0: none)")
    t.add_argument("--pairs", type=int, default=4096)
    t.add_argument("--teacher-guidance", type=float, default=4.0)
    t.add_argument("--substeps", type=int, default=10, help="teacher Euler steps per student step for ODE pairs")
    t.add_argument("--trajectory-iters", type=int, default=3000)
    t.add_argument("--dmd-iters", type=int, default=2000)
    t.add_argument("--no-timestep-sharing", action="store_true", help="DMD at random timesteps (the ablation)")
    t.add_argument("--adv-weight", type=float, default=0.1)
    t.add_argument("--fake-updates", type=int, default=1, help="fake-model updates per generator update (DMD2: 5)")
    t.add_argument("--variance-batches", type=int, default=8,
                   help="batches per DMD gradient-variance measurement (at the start, middle and end of DMD)")
    t.add_argument("--split-iters", type=int, default=500)
    t.add_argument("--merge-ratios", default="0,0.3,0.5,0.7,1")
    t.add_argument("--eval-n", type=int, default=200)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s = sub.add_parser("ship", help="write a trained student as the SDK's built-in model folder (fp16 safetensors)")
    s.add_argument("--run", type=Path, required=True, help="the training run's --out")
    s.add_argument("--student", default="student-4step-split", help="the folder under --run to ship")
    s.add_argument("--to", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "tiny_model")
    s.add_argument("--note", default="", help="text for TRAINING.md (the command that trained the run)")
    d = sub.add_parser("decoder", help="fine-tune a trained folder's VAE decoder alone (latent space kept)")
    d.add_argument("--model", type=Path, required=True, help="a trained folder (family.json), e.g. a student")
    d.add_argument("--out", type=Path, required=True, help="the folder to write: --model with the new decoder")
    d.add_argument("--steps", type=int, default=250)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--train-images", type=int, default=20000, help="dataset pictures (dataset seed 0, as training)")
    d.add_argument("--threads", type=int, default=0)
    e = sub.add_parser("eval", help="mini-GenEval of a trained folder")
    e.add_argument("--model", type=Path, required=True)
    e.add_argument("--steps", type=int, default=4)
    e.add_argument("--guidance", type=float, default=1.0)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--grid", type=Path, default=None, help="also save the first 16 pictures as a PNG grid")
    return ap


class Run:
    def __init__(self, args, ctx):
        self.a, self.ctx, self.out = args, ctx, args.out
        self.t0 = time.time()
        if ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)

    def log(self, stage: str):
        def _log(step, values):
            if self.ctx.main and (step % 50 == 0 or step < 5):
                rec = {"stage": stage, "step": step, "time": round(time.time() - self.t0, 1),
                       **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
        return _log

    def barrier(self):
        if self.ctx.active:
            torch.distributed.barrier()

    def save(self, family, name: str, transformer=None) -> None:
        if self.ctx.main:
            tmp = self.out / f".{name}.partial"
            family.save(tmp, transformer)
            state = self.out / name / "train_state.pt"
            if state.exists():
                state.replace(tmp / "train_state.pt")
            import shutil
            shutil.rmtree(self.out / name, ignore_errors=True)
            tmp.replace(self.out / name)
        self.barrier()


def train(a) -> int:
    from .dataset import ShapesDataset
    from .distributed import Dist
    from .evaluate import evaluate
    from .flow import schedule
    from .models import Family, FamilyConfig, tiny_test_config
    from . import dmd, split, teacher, trajectory

    if a.threads:
        torch.set_num_threads(a.threads)
    ctx = Dist.from_env(a.device)
    run = Run(a, ctx)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: unknown stage(s) {bad}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    cfg = tiny_test_config(a.size) if a.preset == "test" else FamilyConfig(size=a.size)
    ds = ShapesDataset(a.train_images, seed=a.seed, size=a.size)
    images, prompts = ds.arrays()
    images = torch.from_numpy(((images + 1.0) * 127.5).round().clip(0, 255).astype("uint8"))
    out = run.out

    # ------------------------------------------------------------ vae
    if (out / "vae" / "family.json").exists():
        family = Family.load(out / "vae")
    else:
        family = Family.build(cfg, seed=a.seed).to(ctx.device)
        ctx.broadcast(family.vae, family.transformer, family.text_encoder, family.text_encoder_2)
        if "vae" not in stages:
            print("error: no trained VAE under --out; run the 'vae' stage", file=sys.stderr)
            return 2
        teacher.train_vae(family, images, a.vae_steps, a.batch, seed=a.seed, ctx=ctx, log=run.log("vae"))
        teacher.fit_latent_scaling(family, images)
        run.save(family, "vae")
    family.to(ctx.device)
    for p in family.vae.parameters():
        p.requires_grad_(False)
    latents = teacher.encode_dataset(family, images)

    # ------------------------------------------------------------ teacher
    tdir = out / "teacher"
    state_file = tdir / "train_state.pt"
    done = (tdir / "family.json").exists() and (
        not state_file.exists() or load_state(state_file)["step"] >= a.teacher_steps)
    if "teacher" in stages and not done:
        resume = None
        if state_file.exists():
            family = Family.load(tdir).to(ctx.device)
            resume = load_state(state_file)

        def checkpoint(state):
            run.save(family, "teacher")
            if ctx.main:
                torch.save(state, state_file)

        teacher.train_teacher(family, latents, prompts, a.teacher_steps, a.batch, a.teacher_lr, a.seed, ctx,
                              log=run.log("teacher"), resume=resume, checkpoint=checkpoint, every=a.save_every,
                              ema=a.teacher_ema)
    if not (tdir / "family.json").exists():
        print("error: no trained teacher under --out; run the 'teacher' stage", file=sys.stderr)
        return 2
    family = Family.load(tdir).to(ctx.device)
    for m in (family.text_encoder, family.text_encoder_2, family.transformer):
        for p in m.parameters():
            p.requires_grad_(False)
    k = a.student_steps
    sigmas = schedule(k, cfg.shift)

    # ------------------------------------------------------------ ODE pairs
    pfile = out / f"pairs-{k}step.pt"
    if "pairs" in stages and not pfile.exists():
        if ctx.main:
            g = torch.Generator().manual_seed(a.seed + 1)
            pprompts = [prompts[int(i)] for i in torch.randint(len(prompts), (a.pairs,), generator=g)]
            noise = torch.randn(a.pairs, 16, cfg.latent_size, cfg.latent_size, generator=g).to(ctx.device)
            pts = trajectory.make_ode_pairs(family, family.transformer, pprompts, noise, sigmas.to(ctx.device),
                                            a.teacher_guidance, a.substeps)
            torch.save({"points": pts.cpu(), "prompts": pprompts, "sigmas": sigmas}, pfile)
        run.barrier()
    if not pfile.exists():
        return 0
    pairs = load_state(pfile)
    points, pprompts = pairs["points"].to(ctx.device), pairs["prompts"]

    def student_from(name):
        return Family.load(out / name).transformer.to(ctx.device)

    # ------------------------------------------------------------ stage 1
    s1 = f"student-{k}step-trajectory"
    if "trajectory" in stages and not (out / s1).exists():
        student = copy.deepcopy(family.transformer)
        for p in student.parameters():
            p.requires_grad_(True)
        trajectory.train_trajectory(family, student, points, pprompts, sigmas, a.trajectory_iters, a.batch,
                                    seed=a.seed, ctx=ctx, log=run.log("trajectory"))
        run.save(family, s1, student)
    # ------------------------------------------------------------ stage 2
    s2 = f"student-{k}step-dmd" + ("-random" if a.no_timestep_sharing else "")
    if "dmd" in stages and (out / s1).exists() and not (out / s2).exists():
        student = student_from(s1)
        state = dmd.make_state(student, family.transformer, sigmas,
                               dmd.DMDConfig(share_timesteps=not a.no_timestep_sharing, guidance=a.teacher_guidance,
                                             adv_weight=a.adv_weight, fake_updates=a.fake_updates))
        _, variances = dmd.train_dmd(family, state, pprompts, points[:, -1], a.dmd_iters, a.batch, a.seed, ctx,
                                     log=run.log("dmd"), variance_at=(0, a.dmd_iters // 2, a.dmd_iters),
                                     variance_batches=a.variance_batches)
        run.save(family, s2, state.student)
        if ctx.main:  # beside the student folder: the ablation table reads it
            (out / f"{s2}-gradient-variance.json").write_text(json.dumps(variances, indent=1) + "\n")
    # ------------------------------------------------------------ stage 3
    s3 = f"student-{k}step-split"
    if "split" in stages and (out / s2).exists() and not (out / s3).exists():
        student = student_from(s2)
        for p in student.parameters():
            p.requires_grad_(True)
        g = torch.Generator().manual_seed(a.seed + 3)

        def loss_fn(model, steps, it):
            b = trajectory.draw_steps(g, a.batch, len(points), steps)
            idx = ctx.shard(b["idx"])
            with torch.no_grad():
                cond = family.encode([pprompts[i] for i in idx.tolist()])
            return trajectory.trajectory_loss(family, model, points[idx.to(points.device)], cond,
                                              ctx.shard(b["step"]).to(points.device), sigmas.to(points.device))

        low, high = split.split_finetune(student, sigmas, loss_fn, a.split_iters, ctx=ctx, log=run.log("split"))
        ratios = [float(r) for r in a.merge_ratios.split(",")]
        best, scores = split.choose_ratio(low, high, ratios,
                                          lambda m: evaluate(family, m, k, n=a.eval_n)[0].overall)
        run.save(family, s3, split.merge(low, high, best))
        if ctx.main:
            (out / f"split-{k}step.json").write_text(json.dumps({"ratio": best, "scores": scores}, indent=1) + "\n")
    return 0


def decoder_cmd(a) -> int:
    """A trained folder -> the same folder with its VAE decoder fine-tuned (``decoder.py``), written atomically."""
    from ..atomic import atomic_directory
    from .dataset import ShapesDataset
    from .decoder import finetune_decoder
    from .models import Family

    if a.threads:
        torch.set_num_threads(a.threads)
    if not (a.model / "family.json").is_file():
        print(f"error: {a.model} is not a trained folder (no family.json)", file=sys.stderr)
        return 2
    family = Family.load(a.model)
    images, _ = ShapesDataset(a.train_images, seed=0, size=family.config.size).arrays()
    t0 = time.time()

    def log(step, values):
        if step % 50 == 0 or step < 3:
            print(json.dumps({"stage": "decoder", "step": step, "time": round(time.time() - t0, 1), **values}),
                  flush=True)

    finetune_decoder(family, torch.from_numpy(images), a.steps, a.batch, a.lr, a.seed, log=log)
    with atomic_directory(a.out, force=True, replaceable=is_model_folder) as tmp:
        family.save(tmp)
        defaults = a.model / "flash_edge.json"
        if defaults.is_file():  # how it runs (steps, size) is the source folder's
            (tmp / "flash_edge.json").write_text(defaults.read_text())
    print(f"wrote {a.out}")
    return 0


def evaluate_cmd(a) -> int:
    from .evaluate import evaluate
    from .models import Family

    family = Family.load(a.model)
    s, images, prompts = evaluate(family, family.transformer, a.steps, a.guidance, a.n)
    print(json.dumps({"model": str(a.model), "steps": a.steps, "guidance": a.guidance, **s.as_dict()}))
    if a.grid:
        import numpy as np
        from PIL import Image

        k = min(16, len(images))
        rows = [np.concatenate(list(images[r * 4:r * 4 + 4]), axis=1) for r in range(k // 4)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(a.grid)
    return 0


def ship_cmd(a) -> int:
    """Student folder -> the built-in model: weights stored fp16 (half the bytes; the SDK loads them as fp32,
    so the fp16-rounded weights *are* the model every parity number refers to), plus TRAINING.md."""
    from ..atomic import atomic_directory
    from .models import Family

    src = a.run / a.student
    if not (src / "family.json").is_file():
        print(f"error: {src} is not a trained folder (no family.json)", file=sys.stderr)
        return 2
    family = Family.load(src)
    for m in (family.transformer, family.vae, family.text_encoder, family.text_encoder_2):
        m.half()
    with atomic_directory(a.to, force=True, replaceable=is_model_folder) as tmp:
        family.save(tmp)
        # How it was trained to run (the SDK's defaults, and a warning at other settings): its step count from
        # the run's folder name (student-{k}step-...), its image size from the family.
        from ..models.loading import DEFAULTS_FILE

        defaults = json.loads((tmp / DEFAULTS_FILE).read_text())
        if m := re.match(r"student-(\d)step-", a.student):
            defaults["steps"] = int(m[1])
        defaults["size"] = family.config.size
        (tmp / DEFAULTS_FILE).write_text(json.dumps(defaults) + "\n")
        (tmp / "TRAINING.md").write_text(
            f"# The built-in model `tiny`\n\nShipped from `{a.student}` of a `python -m flash_edge.distill train` "
            f"run with `python -m flash_edge.distill ship --run RUN --student {a.student}`.\n\n{a.note}\n")
    print(f"wrote {a.to}")
    return 0


def load_state(path):
    """A run folder's training state or ODE pairs (``torch.save`` of tensors, numbers, strings and state dicts),
    read with ``weights_only=True``: torch's restricted unpickler builds those and nothing else, so a planted
    file cannot run code. Anything it refuses is a ``FlashError`` naming the file."""
    import pickle

    import torch

    from ..errors import FlashError, first_line

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise FlashError(f"{path} is not a training state this run wrote (torch.load with weights_only refused "
                         f"it: {first_line(e)}); delete it to start that stage again") from None


def is_model_folder(path) -> bool:
    """a diffusers model folder: it holds model_index.json."""
    return (path / "model_index.json").is_file()


def _quiet() -> None:
    """No per-file progress bars or save notices from diffusers/transformers in the training log."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def main(argv=None) -> int:
    from ..cli.common import run

    a = _parser().parse_args(argv)
    _quiet()
    return run("python -m flash_edge.distill", lambda: {"train": train, "ship": ship_cmd, "eval": evaluate_cmd,
                                                         "decoder": decoder_cmd}[a.command](a))
