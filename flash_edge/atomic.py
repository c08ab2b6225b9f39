"""Writing an output folder (a bundle) so that no failure, kill or second writer loses the user's data.

``atomic_directory(dest, force)``:

* **One writer per destination.** An advisory lock (``.NAME.lock`` beside ``dest``, ``flock``) is held for the
  whole write; a second writer fails at once with a message. The OS drops the lock when a process dies.
* **Built aside, swapped in.** The new folder is built inside a marked work folder beside ``dest``
  (``.NAME.XXXX.partial/`` holding ``bundle/`` and the marker ``.flash-edge-partial.json``) and moved into place at
  the end. An existing ``dest`` is *exchanged* with the new folder in one atomic rename (``renameat2``
  ``RENAME_EXCHANGE`` on Linux, ``renamex_np`` ``RENAME_SWAP`` on macOS), so a kill at any moment leaves the old
  or the new bundle at ``dest``. Where the OS or file system cannot exchange, the old folder is first moved
  into the marked work folder; a kill between the two renames is repaired by the next write to that parent.
* **Leftovers are cleaned.** Each write first removes the work folders of earlier writes to the same parent
  that were killed, recognised by their marker and by their destination's lock being free (a work folder
  whose writer still runs is left alone), restoring an old bundle a killed swap had moved aside.
* **Only bundles are replaced.** ``force`` replaces an existing ``dest`` only when it is empty or a flash-edge
  bundle (a ``manifest.json`` carrying the format marker): a folder of other files is never deleted.
* **Permissions follow the umask**, as for any file the user writes (temporary folders are created 0700).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InvalidInput

MARKER = ".flash-edge-partial.json"
BUNDLE_FORMAT = "flash-edge-bundle"  # bundle.FORMAT (bundle.py imports this module)
MANIFEST = "manifest.json"


def is_bundle(path: Path) -> bool:
    """a flash-edge bundle: a manifest.json with format flash-edge-bundle."""
    mf = path / MANIFEST
    try:
        if not mf.is_file() or mf.stat().st_size > 64 << 20:
            return False
        data = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == BUNDLE_FORMAT


def check_output_path(dest: str | Path, force: bool, replaceable=is_bundle) -> Path:
    """``dest`` if a bundle may be written there: absent, or (with ``force``) an empty folder or one that
    ``replaceable`` accepts (by default a bundle)."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return dest
    if not force:
        raise InvalidInput(f"{dest} already exists; pass --force to replace it")
    if not dest.is_dir() or dest.is_symlink():
        raise InvalidInput(f"{dest} exists and is not a directory: --force replaces only a bundle")
    if any(dest.iterdir()) and not replaceable(dest):
        what = (replaceable.__doc__ or "").strip().rstrip(".") or f"{replaceable.__name__}"
        raise InvalidInput(f"{dest} is not empty and fails the check '{what}': --force replaces only what "
                           f"flash-edge wrote, so nothing was deleted; choose another --out")
    return dest


def ensure_apart(dest: str | Path, sources) -> None:
    """Refuse a ``dest`` that is, contains or lies inside one of ``sources`` (what the export reads)."""
    out = Path(os.path.realpath(dest))
    for src in sources:
        src = Path(os.path.realpath(src))
        if out == src or src in out.parents or out in src.parents:
            relation = "is" if out == src else ("lies inside" if src in out.parents else "contains")
            raise InvalidInput(f"--out {dest} {relation} the model source {src}: write the bundle elsewhere")


@contextlib.contextmanager
def atomic_directory(dest: str | Path, force: bool = False, replaceable=is_bundle) -> Iterator[Path]:
    """Yield an empty folder to build in; on success it becomes ``dest`` (see the module's docstring).
    On any failure (or Ctrl-C) it is removed and ``dest`` is left as it was. ``replaceable(path)``: what an
    existing ``dest`` must be for ``force`` to replace it (its docstring names it in the refusal)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with write_lock(dest):
        clean_leftovers(dest.parent, own=dest.name)
        check_output_path(dest, force, replaceable)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            (work / MARKER).write_text(json.dumps({"dest": dest.name, "pid": os.getpid()}), encoding="utf-8")
            new = work / "bundle"
            new.mkdir()
            yield new
            follow_umask(new)
            if os.path.lexists(dest):
                swap_in(new, dest, work / "old")
            else:
                os.rename(new, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def swap_in(new: Path, dest: Path, aside: Path) -> None:
    """Put ``new`` at ``dest`` (which exists); the old folder ends up at ``new`` or ``aside``, inside the
    marked work folder that the caller removes."""
    if exchange(new, dest):
        return
    os.rename(dest, aside)  # a kill here is repaired by clean_leftovers: 'aside' goes back to dest
    os.rename(new, dest)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic rename; False where the OS or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), 2)  # RENAME_SWAP
    else:
        return False
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def clean_leftovers(parent: Path, own: str | None) -> list[Path]:
    """Remove the marked work folders (and lock files) in ``parent`` whose writer is gone (for ``own``, the
    destination whose lock the caller holds, every one of them), first moving back an old bundle a killed swap
    left aside. Returns what was removed."""
    removed = []
    for work in sorted(parent.glob(".*.partial")):
        try:
            marker = json.loads((work / MARKER).read_text(encoding="utf-8"))
            name = marker["dest"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not provably ours: left alone
        if not isinstance(name, str) or "/" in name or not work.name.startswith(f".{name}."):
            continue
        with _unless_locked(parent / name, own) as free:
            if free:
                dest, aside = parent / name, work / "old"
                if aside.is_dir() and not os.path.lexists(dest):
                    os.rename(aside, dest)
                shutil.rmtree(work, ignore_errors=True)
                removed.append(work)
    for lock in sorted(parent.glob(".*.lock")):  # a killed writer's: taking and dropping it removes it
        with _unless_locked(parent / lock.name[1:-len(".lock")], own) as free:
            if free and not lock.exists():
                removed.append(lock)
    return removed


@contextlib.contextmanager
def _unless_locked(dest: Path, own: str | None) -> Iterator[bool]:
    """True inside if no other process writes ``dest`` (its lock is taken meanwhile; ``own`` is held already)."""
    if dest.name == own:
        yield True
        return
    try:
        lock = write_lock(dest)
        lock.__enter__()
    except InvalidInput:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


@contextlib.contextmanager
def write_lock(dest: Path) -> Iterator[None]:
    """Hold the advisory write lock of ``dest``; ``InvalidInput`` at once if another process holds it."""
    lock = dest.parent / f".{dest.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            raise InvalidInput(f"another flash-edge process is writing {dest} (it holds {lock}); wait for it to "
                               f"finish, or choose another --out")
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break  # still the file at that name (not one a finishing writer just unlinked)
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the permissions the umask gives new files (0666/0777 & ~umask):
    temporary folders and some writers (safetensors, mkstemp) create 0700/0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if name in dirs else 0o666) & ~mask)
