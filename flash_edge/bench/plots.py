"""latency.png and quality.png (matplotlib, Agg backend: no display needed). Fixed pixel sizes."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

FIGSIZE, DPI = (12, 5), 100
PIXELS = (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)  # (width, height) of both images
PSNR_CAP = 100.0  # where an exact (infinite-PSNR) match is drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=DPI)  # no bbox_inches="tight": the size stays FIGSIZE x DPI
    tmp.replace(path)
    return path


def _latency_series(results: dict) -> tuple[list[str], dict[str, list[float]], dict[str, list[float]]]:
    labels, comps, e2e = [], {"text encoders": [], "transformer step": [], "VAE decode": []}, \
        {"1 step": [], "2 steps": [], "4 steps": []}

    def add(label, lat):
        labels.append(label)
        c = lat["components"]
        for k, v in zip(comps, (lat["text_encoders_s"], c["transformer"]["median"], c["vae_decoder"]["median"])):
            comps[k].append(v * 1e3)
        for k, n in zip(e2e, ("1", "2", "4")):
            e2e[k].append(lat["e2e"][n]["median"] * 1e3 if n in lat["e2e"] else math.nan)

    for b in results["baselines"]:
        add("PyTorch fp32 (ref)", b["latency"])
    for r in results["bundles"]:
        add(r["label"], r["latency"])
    return labels, comps, e2e


def _bars(ax, labels, series: dict, title: str) -> None:
    y = np.arange(len(labels))
    h = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.barh(y + (i - (len(series) - 1) / 2) * h, values, height=h, label=name)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # 1-2-5 ticks with plain numbers: a panel whose bars span less than a decade still has values on its axis
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("median ms (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3, which="both")


def latency_plot(results: dict, path: Path) -> Path:
    plt = _pyplot()
    labels, comps, e2e = _latency_series(results)
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI, layout="constrained")
    _bars(axes[0], labels, comps, "per component")
    _bars(axes[1], labels, e2e, "end to end")
    fig.suptitle(f"flash-bench latency on {results['machine_label']}", fontsize=9)
    _save(fig, path)
    plt.close(fig)
    return path


def quality_plot(results: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax_p, ax_s) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI, layout="constrained")
    n = len(results["settings"]["prompts"])
    x = np.arange(n)
    for r in results["bundles"]:
        q = r["quality"]
        if "error" in q:
            continue
        psnr = [PSNR_CAP if math.isinf(v) else v for v in q["psnr_db"]]
        ax_p.plot(x, psnr, marker="o", label=r["label"])
        ax_s.plot(x, q["ssim"], marker="o", label=r["label"])
    ax_p.axhline(PSNR_CAP, color="gray", lw=0.5, ls=":")
    ax_p.set_title(f"PSNR vs fp32 reference (dB; exact drawn at {PSNR_CAP:.0f})", fontsize=10)
    ax_s.set_title("SSIM vs fp32 reference", fontsize=10)
    for ax in (ax_p, ax_s):
        ax.set_xticks(x, [f"p{i}" for i in x])
        ax.set_xlabel("prompt (seed = index)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    prompts = results["settings"]["prompts"]
    # every prompt, shortened at a word boundary, under the panels
    key = [f"p{i}: {textwrap.shorten(p, 48, placeholder=' ...')}" for i, p in enumerate(prompts)]
    fig.suptitle("flash-bench quality", fontsize=9)
    fig.supxlabel("\n".join("    ".join(key[i:i + 2]) for i in range(0, len(key), 2)), fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path
