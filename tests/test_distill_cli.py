"""The training command end to end on the smallest family (a few iterations per stage; CI never retrains)."""

from __future__ import annotations

import pytest

import json

import torch

from flash_edge.distill.cli import main

pytestmark = pytest.mark.slow  # trains through the CLI: left out of the quick subset (pytest -m 'not slow')

SMALL = ["--preset", "test", "--size", "32", "--train-images", "32", "--batch", "4", "--vae-steps", "2",
         "--teacher-steps", "2", "--save-every", "1", "--pairs", "8", "--substeps", "2", "--trajectory-iters", "2",
         "--dmd-iters", "2", "--split-iters", "1", "--merge-ratios", "0.3,0.7", "--eval-n", "4", "--threads", "1"]


def test_every_stage_writes_a_folder_the_sdk_loads(tmp_path, capsys):
    from flash_edge.models import load_model

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--seed", "0", *SMALL]) == 0
    for name in ("vae", "teacher", "student-4step-trajectory", "student-4step-dmd", "student-4step-split"):
        model = load_model(out / name)
        assert list(model.transformer.config.dual_attention_layers) == [0] and model.vae.config.latent_channels == 16
    assert torch.load(out / "teacher" / "train_state.pt", weights_only=False)["step"] == 2
    split = json.loads((out / "split-4step.json").read_text())
    assert split["ratio"] in (0.3, 0.7) and set(split["scores"]) == {"0.3", "0.7"}
    stages = {json.loads(line)["stage"] for line in (out / "log.jsonl").read_text().splitlines()}
    assert stages == {"vae", "teacher", "trajectory", "dmd", "split"}

    # resuming: more teacher steps continue from the saved state (steps 2 and 3 only); later stages are kept
    assert main(["train", "--out", str(out), "--seed", "0", *SMALL, "--teacher-steps", "4", "--stages", "teacher"]) == 0
    assert torch.load(out / "teacher" / "train_state.pt", weights_only=False)["step"] == 4
    teacher_steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
                     if json.loads(line)["stage"] == "teacher"]
    assert teacher_steps == [0, 1, 2, 3]

    # the random-timestep ablation gets its own folder
    assert main(["train", "--out", str(out), "--seed", "0", *SMALL, "--stages", "dmd", "--no-timestep-sharing"]) == 0
    assert (out / "student-4step-dmd-random" / "model_index.json").is_file()

    # each DMD run measured its gradient's variance under both rules at its start, middle and end ...
    for name in ("student-4step-dmd", "student-4step-dmd-random"):
        measured = json.loads((out / f"{name}-gradient-variance.json").read_text())
        assert [m["iteration"] for m in measured] == [0, 1, 2]
        assert all(m[rule]["relative"] >= 0 for m in measured for rule in ("sharing", "random"))
    # ... and the ablation table shows it beside the scores and the artefact score
    from benchmarks.distill_ablation import main as ablation

    assert ablation(["--run", str(out), "--n", "2", "--out", str(tmp_path / "ablation")]) == 0
    table = (tmp_path / "ablation" / "distill-ablation.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| student 4-step | + DMD, random"))
    assert "| random " in row and "(sharing " in row and row.count(" / ") >= 5
    assert "artefacts ring / far" in table and "| student 2-step | + DMD, random timesteps | 2 | missing" in table

    capsys.readouterr()
    assert main(["eval", "--model", str(out / "teacher"), "--steps", "2", "--n", "4"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 4 and 0.0 <= res["overall"] <= 1.0

    # shipping the student as a built-in model folder: fp16 on disk, the same model as fp32 once loaded
    shipped = tmp_path / "shipped"
    assert main(["ship", "--run", str(out), "--to", str(shipped), "--note", "test run"]) == 0
    from safetensors import safe_open

    with safe_open(str(shipped / "transformer" / "diffusion_pytorch_model.safetensors"), framework="pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float16}
    a, b = load_model(shipped), load_model(out / "student-4step-split")
    # how it runs: no T5 slot, its 4 steps (from the folder name), its training size
    assert a.defaults == {"t5_tokens": 0, "steps": 4, "size": a.vae.config.sample_size} and a.transformer.dtype == torch.float32
    for (name, p), q in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values()):
        torch.testing.assert_close(p, q.half().float(), rtol=0, atol=0, msg=name)  # exactly the fp16 rounding
    assert "test run" in (shipped / "TRAINING.md").read_text()
    assert main(["ship", "--run", str(tmp_path / "nope"), "--to", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_unknown_stage_is_exit_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--stages", "teacher,magic", *SMALL]) == 2
    assert "unknown stage" in capsys.readouterr().err
