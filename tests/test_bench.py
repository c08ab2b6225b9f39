"""flash-bench: the instruments (SSIM, FLOP count, peak RSS, teacher loop, step rebuild) checked against
independent references, and the tiny scenario's report checked for completeness and consistency.
No timing is asserted: speed is what the benchmark reports, never a test's pass condition."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from flash_edge.bench import flops, latency, measure, quality
from flash_edge.cli import bench as bench_cli

ROOT = Path(__file__).resolve().parents[1]


def _benchmarks():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package
    import benchmarks.block
    import benchmarks.sd35m_block

    return benchmarks


# ----------------------------------------------------------------------------- SSIM
def test_ssim_equals_a_gaussian_filter_implementation():
    """Against SSIM written with scipy's Gaussian filter (sigma 1.5, truncate 3.5 = 11 taps, border cropped
    as scikit-image does): agreement to 1e-12 on noisy colour images."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 40, 52))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)

    def oracle(a, b):
        f = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5)  # noqa: E731
        vals = []
        for c in range(a.shape[1]):
            p, q = a[0, c], b[0, c]
            mp, mq = f(p), f(q)
            vp, vq, cpq = f(p * p) - mp**2, f(q * q) - mq**2, f(p * q) - mp * mq
            s = ((2 * mp * mq + 1e-4) * (2 * cpq + 9e-4)) / ((mp**2 + mq**2 + 1e-4) * (vp + vq + 9e-4))
            vals.append(s[5:-5, 5:-5].mean())
        return float(np.mean(vals))

    assert quality.ssim(x, y) == pytest.approx(oracle(x, y), abs=1e-12)
    assert quality.ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_falls_with_noise_and_rejects_bad_shapes():
    rng = np.random.default_rng(1)
    x = rng.random((1, 3, 32, 32))
    values = [quality.ssim(x, np.clip(x + s * rng.standard_normal(x.shape), 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert values[0] > values[1] > values[2] > 0
    from flash_edge.errors import InvalidInput

    with pytest.raises(InvalidInput, match="one shape"):
        quality.ssim(x, x[..., :16])
    with pytest.raises(InvalidInput, match="at least 11"):
        quality.ssim(x[..., :8, :8], x[..., :8, :8])


def test_compare_pools_psnr_and_keeps_exact_matches_infinite():
    a = [np.zeros((1, 3, 16, 16)), np.full((1, 3, 16, 16), 0.5)]
    b = [a[0].copy(), a[1] + 0.01]
    q = quality.compare(a, b)
    assert math.isinf(q["psnr_db"][0]) and q["psnr_db"][1] == pytest.approx(40.0)
    assert q["psnr_db_pooled"] == pytest.approx(10 * math.log10(1 / (1e-4 / 2)))  # mean MSE over both images
    assert len(quality.PROMPTS) >= 8 and len(set(quality.PROMPTS)) == len(quality.PROMPTS)


def test_tiny_bundles_default_to_prompts_in_its_domain():
    from flash_edge.distill.dataset import parse_prompt

    for prompt in quality.SHAPES_PROMPTS:
        parse_prompt(prompt)  # every one is in the shapes grammar tiny was trained on (raises otherwise)
    assert quality.default_prompts(["tiny", "tiny"]) == quality.SHAPES_PROMPTS
    assert quality.default_prompts(["tiny", "sd3.5-medium"]) == quality.PROMPTS


def test_a_ratio_within_the_runs_spread_is_noise():
    from flash_edge.bench.measure import summarize, within_noise

    a, b = summarize([1.00, 1.20, 1.35]), summarize([0.95, 1.10, 1.25])  # spreads 29% and 27%
    assert a["spread"] == pytest.approx(0.35 / 1.20) and a["max"] == 1.35
    assert within_noise(a["median"] / b["median"], a, b)  # 1.09x between two noisy runs: noise
    c = summarize([0.50, 0.51, 0.52])
    assert not within_noise(a["median"] / c["median"], a, c)  # 2.35x: beyond any of it
    one, other = summarize([1.0]), summarize([1.27])
    assert not within_noise(1.27, other, one)  # no repeats, no spread: not judged

# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("side,text", [(16, 333), (8, 77)])
def test_transformer_flops_equal_torch_flop_counter(tiny_dir, side, text):
    """The count from the config equals torch's FlopCounterMode on the real diffusers model (math attention,
    so the attention products are counted too), exactly."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from flash_edge.models import load_model

    t = load_model(tiny_dir).transformer
    cfg = dict(t.config)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.inference_mode():
        t(hidden_states=torch.randn(1, 16, side, side), timestep=torch.tensor([500.0]),
          encoder_hidden_states=torch.randn(1, text, cfg["joint_attention_dim"]),
          pooled_projections=torch.randn(1, cfg["pooled_projection_dim"]))
    assert flops.transformer_flops(cfg, flops.image_tokens(side, side, 2), text) == counter.get_total_flops()


def test_block_flops_agree_with_benchmarks_block():
    """benchmarks/block.py counts the same products; it sizes the adaLN modulation as 2 x 2 x 18 x d^2
    where the module has (9 + 6) x 2 x d^2: a 0.1 % difference, nothing else."""
    block = _benchmarks().block
    d = block.HIDDEN
    for n, dual in ((1024, True), (4096, True), (1024, False)):
        ours = flops.block_flops(n, block.TEXT_TOKENS, d, dual_attention=dual)
        theirs = block.flops(n, dual_attention=dual)
        modulation_theirs = 2 * 2 * d * (6 + 6 * dual + 6) * d
        modulation_ours = 2 * d * (9 if dual else 6) * d + 2 * d * 6 * d
        assert ours - modulation_ours == theirs - modulation_theirs
        assert abs(ours / theirs - 1) < 2e-3


# ----------------------------------------------------------------------------- instruments
def test_summarize_median_and_p90():
    s = measure.summarize([float(v) for v in range(1, 11)])
    assert (s["median"], s["p90"], s["min"], s["n"]) == (5.5, 9.1, 1.0, 10)
    assert s["raw"] == [float(v) for v in range(1, 11)]


def test_peak_rss_sees_a_transient_allocation_and_resets():
    """A 200 MB array allocated and freed inside the block raises the peak by about that much; a block that
    allocates nothing afterwards starts from the reset peak, not the earlier high-water mark."""
    with measure.PeakRSS() as grow:
        a = np.ones(50_000_000, dtype=np.float32)  # 200 MB, touched
        del a
    assert grow.peak - grow.before >= 190e6, grow.record()
    with measure.PeakRSS() as idle:
        pass
    assert idle.peak - idle.before < 50e6, (idle.method, idle.record())


def test_teacher_setting_is_the_pipelines_cfg_sampler(tiny_dir):
    """The teacher setting (40 steps, past a bundle's few-step limit) runs through the pipeline's own sampler:
    the same image as FlashPipeline built with that many steps and that guidance (itself equal to diffusers)."""
    from flash_edge.pipeline import FlashPipeline

    student = FlashPipeline.from_model(tiny_dir)
    for steps in (3, latency.TEACHER_STEPS):
        expected = FlashPipeline.from_model(tiny_dir, steps=steps, guidance_scale=4.5).generate("a green triangle", 0)
        got = latency.teacher_generate(student, "a green triangle", seed=0, steps=steps, guidance=4.5)
        # two loads of the same weights: oneDNN's summation order follows memory alignment (see below)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_warmup_runs_are_unmeasured_and_their_phases_dropped(torch_bundle):
    """``--warmup N``: N unmeasured generations before the measured ones, whose phases alone are kept."""
    from flash_edge.bench.latency import measure_e2e
    from flash_edge.pipeline import FlashPipeline

    pipe = FlashPipeline.from_bundle(torch_bundle)
    calls, generate = [], pipe.generate
    pipe.generate = lambda *a, **k: calls.append(1) or generate(*a, **k)
    out = measure_e2e(pipe, "a red circle", repeats=2, say=lambda m: None, steps=(4,), warmup=3)
    assert len(calls) == 5 and out["4"]["n"] == 2 and len(out["4"]["phases"]) == 2


def test_with_steps_rebuilds_the_schedule_from_the_bundles_shift(torch_bundle, tiny_dir):
    from flash_edge.pipeline import FlashPipeline

    pipe = FlashPipeline.from_bundle(torch_bundle)
    assert latency.with_steps(pipe, pipe.spec.sampler.steps) is pipe
    two = latency.with_steps(pipe, 2)
    assert two.sessions is pipe.sessions and two.spec.sampler.steps == 2
    reference = FlashPipeline.from_model(tiny_dir, steps=2)
    assert two.spec.sampler == reference.spec.sampler
    # same weights, reloaded from the bundle's safetensors: oneDNN's GEMMs depend on the weights' memory
    # alignment, so summation order may differ (measured 1.1e-6 on the trained tiny); 1e-5 << one 8-bit level
    np.testing.assert_allclose(two.generate("a red circle", seed=3), reference.generate("a red circle", seed=3),
                               rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the tiny scenario, end to end
@pytest.fixture(scope="module")
def bf16_bundle(tmp_path_factory, tiny_dir):
    from flash_edge.export import export_bundle

    return export_bundle("tiny", "torch", tmp_path_factory.mktemp("bench") / "torch-bf16", "bf16")


@pytest.fixture(scope="module")
def report(torch_bundle, bf16_bundle, tmp_path_factory):
    """flash-bench over two bundles, one repeat (the tiny scenario). One torch thread: on a shared 2-core
    machine, tiny ops with several threads spend their time waiting for each other."""
    import os

    import torch

    threads = torch.get_num_threads()
    old_env = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the fresh-process memory probe too
    out = tmp_path_factory.mktemp("bench") / "report"
    try:
        code = bench_cli.main(["--bundle", str(torch_bundle), "--bundle", str(bf16_bundle), "--out", str(out),
                               "--repeats", "1", "--quiet"])
    finally:
        torch.set_num_threads(threads)
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def _timing(s):
    assert s["n"] == len(s["raw"]) == 1 and s["median"] > 0 and s["p90"] >= s["median"] and s["min"] > 0


@pytest.mark.slow
def test_report_json_has_every_field(report, torch_bundle, bf16_bundle):
    out, r = report
    assert r["schema"] == "flash-bench/1" and r["command"].startswith("flash-bench --bundle")
    assert r["settings"]["prompts"] == list(quality.SHAPES_PROMPTS)  # bundles of tiny: prompts in its domain
    assert r["settings"]["warmup"] == 1
    assert r["machine"]["logical_cpus"] >= 1 and r["machine"]["versions"]["numpy"] and r["machine_label"]
    assert r["gemm"]["peak_flops_per_s"] > 0 and r["gemm"]["best"] in ("numpy", "torch")
    assert "torch" in r["backends_registered"] and r["backends_registered"]["torch"] == "available"
    (base,) = r["baselines"]  # both bundles come from the same model, size and schedule: one reference
    _timing(base["load"])
    assert base["diffusers"]["steps"] == 4 and base["diffusers"]["e2e"]["median"] > 0
    # diffusers' pipeline on the same weights and latents draws the reference's image (exactly, or within
    # float summation order: 1e-4 on [0, 1] pixels would be 80 dB)
    assert base["diffusers"]["psnr_vs_reference_db"] == "inf" or base["diffusers"]["psnr_vs_reference_db"] > 80
    assert [b["path"] for b in r["bundles"]] == [str(torch_bundle), str(bf16_bundle)]
    for b in r["bundles"]:
        lat = b["latency"]
        assert set(lat["components"]) == {"text_encoder", "text_encoder_2", "transformer", "vae_decoder", "encode"}
        for s in lat["components"].values():
            _timing(s)
        assert set(lat["e2e"]) == {"1", "2", "4"} and lat["bundle_steps"] == 4
        for n, s in lat["e2e"].items():
            _timing(s)
            assert len(s["sigmas"]) == int(n) + 1 and set(s["phases"][0]) == {"encode", "denoise", "decode"}
        t = lat["teacher"]
        assert (t["steps"], t["guidance_scale"], t["basis"], t["t5"]) == (40, 4.5, "measured", False)
        _timing(t["measured"])
        assert t["speedup"] == pytest.approx(t["measured"]["median"] / lat["e2e"]["4"]["median"])
        assert set(b["ratios"]) == {"step_vs_reference", "decode_vs_reference", "e2e_vs_reference",
                                    "e2e_vs_diffusers", "within_noise"}
        assert b["ratios"]["within_noise"] == []  # one repeat has no spread: nothing is called noise
        fl = b["flops"]
        assert fl["image_tokens"] == 16 and fl["text_tokens"] == 77 and fl["transformer_call_flops"] > 0
        assert fl["fraction_of_gemm_peak"] == pytest.approx(fl["achieved_flops_per_s"] / r["gemm"]["peak_flops_per_s"])
        mem = b["memory"]
        assert mem["method"] in ("VmHWM", "psutil-sampling") and mem["cold_load_s"] > 0
        for phase in ("load", "encode", "denoise", "decode"):
            assert mem["phases"][phase]["peak_rss"] >= mem["phases"][phase]["rss_before"] > 0
        assert mem["generation_peak_rss"] == max(mem["phases"][k]["peak_rss"] for k in ("encode", "denoise", "decode"))
        assert mem["process_peak_rss"] >= mem["generation_peak_rss"]


@pytest.mark.slow
def test_report_sizes_bits_and_quality_are_consistent(report):
    _, r = report
    fp32, bf16 = r["bundles"]
    for b in (fp32, bf16):
        manifest = json.loads((Path(b["path"]) / "manifest.json").read_text())
        on_disk = sum(f.stat().st_size for f in Path(b["path"]).rglob("*") if f.is_file() and f.name != "manifest.json")
        assert b["size"]["bundle_bytes"] == on_disk
        comp = b["size"]["components"]["transformer"]
        assert comp["parameters"] == manifest["model"]["parameters"]["transformer"]
        assert comp["bits_per_parameter"] == pytest.approx(8 * comp["bytes"] / comp["parameters"])
    # weights dominate the files: fp32 just above 32 bits, bf16 just above 16 (safetensors header + config)
    assert 32 <= fp32["size"]["components"]["transformer"]["bits_per_parameter"] < 36
    assert 16 <= bf16["size"]["components"]["transformer"]["bits_per_parameter"] < 18
    # the fp32 bundle reloads the reference's weights: the same images up to GEMM summation order (oneDNN's
    # order follows the weights' memory alignment; measured 140.6 dB, or exact); bf16 is close but not equal
    p = fp32["quality"]["psnr_db_pooled"]
    assert (p == "inf" or p > 100) and fp32["quality"]["ssim_mean"] > 0.99999
    assert fp32["quality"]["prompts"] == 8 and len(fp32["quality"]["ssim"]) == 8
    assert 30 < bf16["quality"]["psnr_db_pooled"] < 80 and 0.98 < bf16["quality"]["ssim_mean"] < 1.0


@pytest.mark.slow
def test_report_markdown_and_plots(report):
    out, r = report
    md = (out / "results.md").read_text()
    assert r["machine_label"] in md and r["command"] in md
    summary = md.split("## Summary (one row per bundle)")[1].split("\n## ")[0]
    rows = [ln for ln in summary.strip().splitlines() if ln.startswith("|")][2:]
    assert [row.split("|")[1].strip() for row in rows] == [b["label"] for b in r["bundles"]]
    assert all(row.count("|") == len(bench_cli_summary_header()) + 1 for row in rows)
    psnr_cell = rows[0].split("|")[len(bench_cli_summary_header()) - 2].strip()  # the fp32 bundle's PSNR
    assert (psnr_cell == "exact (inf)" or float(psnr_cell) > 100) and "n/a" not in summary
    for section in ("## Latency", "## Peak resident memory", "## Artifact size", "## Quality", "## Transformer compute"):
        assert section in md
    from PIL import Image

    from flash_edge.bench.plots import PIXELS

    for name in ("latency.png", "quality.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size == PIXELS
    assert not list(out.glob(".*partial*"))


def bench_cli_summary_header():
    from flash_edge.bench.report import SUMMARY_HEADER

    return SUMMARY_HEADER


# ----------------------------------------------------------------------------- errors: one line, exit 2
@pytest.mark.parametrize("extra,message", [
    (["--bundle", "/nonexistent/bundle"], "does not exist"),
    (["--height", "256"], "generates 64x64, not the --height 256"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--backend", "torch"] * 2,
     "give one --backend for every bundle or one per --bundle: got 2 backends for 1 bundles"),
])
def test_bad_input_is_one_line_exit_2(torch_bundle, tmp_path, capsys, extra, message):
    argv = ["--out", str(tmp_path / "o"), "--quiet"]
    if "--bundle" not in extra:
        argv += ["--bundle", str(torch_bundle)]
    assert bench_cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flash-bench: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused(torch_bundle, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert bench_cli.main(["--bundle", str(torch_bundle), "--out", str(f), "--quiet"]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the scenarios
def test_block_scenario_covers_every_registered_target_and_precision():
    from flash_edge.export import REGISTRY, exporter_class

    sc = _benchmarks().sd35m_block
    cases = sc.cases()
    assert cases[:2] == [(sc.EAGER, "fp32"), (sc.EAGER, "bf16")]
    assert set(cases[2:]) == {(t, p) for t in REGISTRY if t not in sc.NOT_BLOCK_TARGETS
                              for p in exporter_class(t).precisions}
    assert sc.NOT_BLOCK_TARGETS == ("torch",)  # its PyTorch run is the eager rows


def test_block_scenario_case_runs_the_real_size_block():
    """One eager case at 16 image + 333 text tokens: the SD3.5-M block (hidden 1536) runs, its output equals
    the fp32 run (inf dB), and the FLOPs are block.py's."""
    sc = _benchmarks().sd35m_block
    rec = sc.run_case(sc.EAGER, "fp32", 16, repeats=1)
    assert rec["psnr_db"] == math.inf and rec["seconds"]["n"] == 1
    assert rec["flops"] == _benchmarks().block.flops(16) and rec["peak_rss"] > 200e6  # 1536-wide block: ~95M params


def test_full_scenario_builds_the_real_sd35_medium_sizes():
    """sd35m-full's model, built on the meta device: SD3.5-Medium's parameter counts (2.24B transformer,
    the 49.5M VAE decoder), so the hand-run scenario measures the real architecture."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.sd35m_full import parameter_counts

    counts = parameter_counts()
    assert 2.2e9 < counts["transformer"] < 2.3e9
    assert 49e6 < counts["vae_decoder"] < 50e6
    assert 120e6 < counts["text_encoder"] < 130e6 and 690e6 < counts["text_encoder_2"] < 700e6


def test_full_scenario_folder_loads_as_an_sd3_model(tmp_path, monkeypatch):
    """The hand-run scenario's folder builder, with the sizes shrunk: a diffusers folder flash-edge loads and
    generates from (so the real-size run fails on nothing but time and memory)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import sd35m_full

    from flash_edge.pipeline import FlashPipeline

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, vocab_size=1000)
    monkeypatch.setattr(sd35m_full, "CLIP_L", {**sd35m_full.CLIP_L, **small, "projection_dim": 32})
    monkeypatch.setattr(sd35m_full, "CLIP_G", {**sd35m_full.CLIP_G, **small, "projection_dim": 32})
    monkeypatch.setattr(sd35m_full, "TRANSFORMER", {**sd35m_full.TRANSFORMER, "num_layers": 2, "attention_head_dim": 8,
                                                    "num_attention_heads": 2, "joint_attention_dim": 64,
                                                    "caption_projection_dim": 16, "pooled_projection_dim": 64,
                                                    "dual_attention_layers": (0,), "pos_embed_max_size": 32})
    monkeypatch.setattr(sd35m_full, "VAE", {**sd35m_full.VAE, "block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4,
                                            "layers_per_block": 1})
    folder = sd35m_full.build_folder(tmp_path / "model", say=lambda m: None)
    pipe = FlashPipeline.from_model(folder, height=64, width=64, steps=1)
    image = pipe.generate("a red circle", seed=0)
    assert image.shape == (1, 3, 64, 64) and np.isfinite(image).all()
