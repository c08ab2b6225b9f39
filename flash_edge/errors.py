"""The errors flash-edge raises on purpose.

Every one of them is a user-facing condition (bad input, a missing package, a failed gate): the CLI prints
its message as one line and exits with status 2. Anything else escaping is a bug in flash-edge.
"""


class FlashError(Exception):
    """Base class: a condition the user can act on; the message says what and how."""


class InvalidInput(FlashError, ValueError):
    """An argument is out of range or malformed (steps, size, prompt, precision, ...)."""


class ModelLoadError(FlashError):
    """A model folder or checkpoint is missing, incomplete, corrupt or in an unsupported format."""


class BundleError(FlashError):
    """A bundle is missing, corrupt, from another format version, or fails its hash check."""


class GenerationError(FlashError):
    """A generation produced non-finite numbers (NaN or inf): an error, never a silently black image."""


class BackendUnavailable(FlashError):
    """A backend (or execution provider, or exporter) cannot run here: package missing or wrong platform."""


class ExportError(FlashError):
    """An export step failed; nothing was written."""


class ParityError(ExportError):
    """An exported artifact does not reproduce the PyTorch reference within the gate."""


class FlashWarning(UserWarning):
    """flash-edge's own warnings: the CLI prints each as one line, ``PROG: warning: ...``."""


class OutOfRangeWarning(FlashWarning):
    """A setting the model was not trained for (another image size or step count): it runs, and may draw badly.
    Warned in one line, never refused."""


class DeviceWarning(FlashWarning):
    """This bundle runs on this device but loses accuracy or speed here (for example signed int8 weights on an
    x86 CPU without VNNI). Warned once per component, never refused."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of ``e``'s message (cut at ``limit`` characters), or its type's name if it has none:
    what a one-line error quotes of a library's exception."""
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return line if len(line) <= limit else line[:limit] + "..."
