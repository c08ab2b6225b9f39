"""Libraries' own chatter off by default, in the CLI and in the Python API alike.

What it covers: the info/warning logs and progress bars of transformers and diffusers ("Loading weights"), the
import notices of torchao ("Failed to load ... .so") and torch's ``_pytree`` deprecation lines, Python warnings
raised inside library calls, and with ``native=True`` what C++ code writes straight to the stderr file
descriptor (ExecuTorch's ``cpuinfo_utils.cpp ... Failed to open midr file``).

``FLASH_EDGE_LIBRARY_LOGS=1`` turns all of it back on (for a bug report). flash-edge's own messages (progress,
errors, ``FlashWarning``) are never inside these blocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

LOGS_ENV = "FLASH_EDGE_LIBRARY_LOGS"
LOGGERS = ("torchao", "torch", "torch.utils._pytree", "onnxscript", "coremltools", "executorch", "transformers",
           "diffusers")


def library_logs_wanted() -> bool:
    return os.environ.get(LOGS_ENV, "") not in ("", "0")


@contextlib.contextmanager
def quiet(native: bool = False, hf_libraries: bool = True):
    """Run a block of library calls with their logs, bars and warnings off (``native``: also what native code
    writes to file descriptor 2, which Python cannot filter; ``hf_libraries``: transformers' and diffusers'
    settings too, which imports their logging modules). Nothing changes when ``FLASH_EDGE_LIBRARY_LOGS`` is set."""
    if library_logs_wanted():
        yield
        return
    loggers = [logging.getLogger(None if n == "root" else n) for n in LOGGERS]
    levels = [lg.level for lg in loggers]
    hf = _hf_logging(True) if hf_libraries else None
    with warnings.catch_warnings(), (_native_stderr_off() if native else contextlib.nullcontext()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            if hf is not None:
                _hf_logging(hf)


def _hf_logging(quiet: bool | tuple) -> tuple:
    """transformers' and diffusers' own verbosity and progress bars: ``True`` sets them to errors only and no
    bars, returning what was there; that tuple passed back restores it. Both libraries configure their loggers
    when ``.utils.logging`` is first imported (their package imports are lazy), so it is imported here, first."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    if quiet is True:
        saved = tuple((log.get_verbosity(), log.is_progress_bar_enabled()) for log in (tl, dl))
        for log in (tl, dl):
            log.set_verbosity(logging.ERROR)
            log.disable_progress_bar()
        return saved
    for log, (level, bars) in zip((tl, dl), quiet):
        log.set_verbosity(level)
        (log.enable_progress_bar if bars else log.disable_progress_bar)()
    return ()


@contextlib.contextmanager
def _native_stderr_off():
    """Point file descriptor 2 at /dev/null for the block (Python's own ``sys.stderr`` is flushed first)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
