"""Batch generation's inputs and outputs: seed lists, prompt files, one file name per picture, a contact sheet.

``flash-generate`` loads the model once and draws every (prompt, seed) pair, prompts in file order, seeds in the
order given. Names: one picture -> ``--out`` itself; several -> ``STEM-sSEED.png`` beside it (one prompt) or
``STEM-pN-sSEED.png`` (prompt N of the file, from 1).
"""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidInput
from .sampler import check_seed
from .tokenization import check_prompt

MAX_IMAGES = 10_000  # one command's batch: a typo like --seeds 0-99999999 is refused, not started


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"3,5,9"`` or a mix (``"0-3,10"``) -> the seeds, in order, each checked (0..2^64-1)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InvalidInput(f"--seeds takes integers and ranges like 0-7 or 1,5,9, got {text!r}") from None
        if b < a:
            raise InvalidInput(f"--seeds range {part!r} runs backwards")
        if len(seeds) + (b - a + 1) > MAX_IMAGES:
            raise InvalidInput(f"--seeds {text!r} asks for more than {MAX_IMAGES} pictures")
        seeds.extend(check_seed(s) for s in range(a, b + 1))
    return seeds


def seeds_from(seed: int, seeds: str | None, num_images: int | None) -> list[int]:
    """The command's seeds: ``--seeds`` as given, else ``--num-images`` of them from ``--seed`` (default one)."""
    if seeds is not None:
        if num_images is not None:
            raise InvalidInput("--num-images counts from --seed; with --seeds, list the seeds you want")
        return parse_seeds(seeds)
    first = check_seed(seed)
    n = 1 if num_images is None else num_images
    if n < 1:
        raise InvalidInput(f"--num-images must be at least 1, got {n}")
    return parse_seeds(f"{first}-{first + n - 1}")


def read_prompts(path: str | Path) -> list[str]:
    """A prompts file: UTF-8 text, one prompt per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"prompts file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InvalidInput(f"cannot read prompts file {path}: {e.strerror}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InvalidInput(f"prompts file {path} holds no prompt (one per line; '#' starts a comment)")
    if len(prompts) > MAX_IMAGES:
        raise InvalidInput(f"prompts file {path} holds more than {MAX_IMAGES} prompts")
    return [check_prompt(p) for p in prompts]


def output_paths(out: str | Path, n_prompts: int, seeds: list[int]) -> list[list[Path]]:
    """File per (prompt, seed): ``[prompt][seed]`` (see the module's naming rule)."""
    out = Path(out)
    if n_prompts * len(seeds) > MAX_IMAGES:
        raise InvalidInput(f"{n_prompts} prompts x {len(seeds)} seeds is more than {MAX_IMAGES} pictures")
    if n_prompts == 1 and len(seeds) == 1:
        return [[out]]
    stem = out.with_suffix("")
    if len(set(seeds)) != len(seeds):
        raise InvalidInput("--seeds lists a seed twice: both pictures would go to the same file")
    prompt_part = (lambda i: f"-p{i + 1}") if n_prompts > 1 else (lambda i: "")
    return [[stem.with_name(f"{stem.name}{prompt_part(i)}-s{s}.png") for s in seeds] for i in range(n_prompts)]


def contact_sheet(images: list[list], gap: int = 2, background=(255, 255, 255)):
    """PIL images ``[row][column]`` (one row per prompt, one column per seed) -> one PIL image with ``gap``
    pixels between cells; a single prompt's pictures wrap into rows of at most 8."""
    from PIL import Image

    if len(images) == 1 and len(images[0]) > 8:
        flat = images[0]
        images = [flat[i:i + 8] for i in range(0, len(flat), 8)]
    w, h = images[0][0].size
    cols = max(len(r) for r in images)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * gap, len(images) * h + (len(images) - 1) * gap), background)
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            sheet.paste(im, (c * (w + gap), r * (h + gap)))
    return sheet
