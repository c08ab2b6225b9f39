"""What every flash-* command shares: one-line errors with exit status 2, progress on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from typing import Callable

from ..errors import FlashError, FlashWarning

EXIT_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), exit status 2."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str, example: str) -> Parser:
    from .. import __version__

    parser = Parser(prog=prog, description=description, epilog=f"example:\n  {example}",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} (flash-edge {__version__})")
    return parser


def integer_arg(text: str) -> int:
    """An integer argument; its range (seed 0..2^64-1, steps 1..8, sizes, ...) is checked by the API it feeds,
    which says the rule in its message."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def quiet_libraries() -> None:
    """Keep the terminal for flash-edge's own progress: libraries' info logs and bars off."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TORCH_LOGS", "-torch")  # torch re-arms its own loggers on import (torchao's pytree notices)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("always", category=FlashWarning)  # ours: shown, one line (see ``run``)
    for name in ("torchao", "torch", "onnxscript", "coremltools", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Progress:
    """``progress(msg)`` prints ``[  1.2s] msg`` to stderr; silent with --quiet."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command body: FlashError -> one line on stderr, exit 2; Ctrl-C -> exit 130; flash-edge's own
    warnings (``FlashWarning``: out-of-range settings, device mismatches) -> one line each, ``PROG: warning: ...``."""
    def one_line(message, category, *args, **kwargs):
        if issubclass(category, FlashWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = one_line
    try:
        return body() or 0
    except FlashError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
