"""The user's data: --force replaces only bundles, a kill never loses the old bundle, killed exports leave
nothing that the next one does not clean, two writers never race, flash-generate checks --out before it
works, and prompts, seeds and permissions behave as a user expects."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flash_edge import atomic
from flash_edge.cli import export as export_cli
from flash_edge.cli import generate as generate_cli
from flash_edge.errors import InvalidInput

sys.path.insert(0, str(Path(__file__).parent))  # the test helpers beside this file (pytest runs importlib mode)
from test_cli import assert_one_line_error, run_cli  # noqa: E402


def fake_bundle(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"format": atomic.BUNDLE_FORMAT, "tag": tag}))
    (path / "weights.bin").write_bytes(tag.encode() * 100)
    return path


def tag_of(path: Path) -> str:
    return json.loads((path / "manifest.json").read_text())["tag"]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def in_child(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@contextlib.contextmanager
def child_holding(context: str, cwd: Path):
    """A live child process inside ``with <context>:`` (an expression over ``atomic`` and ``Path``) while the
    block runs; killed afterwards."""
    ready = cwd / ".ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from flash_edge import atomic
        with {context}:
            Path({str(ready)!r}).write_text("1")
            time.sleep(120)
    """)], cwd=cwd)
    try:
        while not ready.exists():
            assert child.poll() is None, "the child died before it held its lock"
            time.sleep(0.05)
        ready.unlink()
        yield child
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------------- --force replaces only bundles
def test_force_never_deletes_a_folder_that_is_not_a_bundle(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    code, err = run_cli(export_cli.main, "--target", "torch", "--out", d, "--force", "--quiet")
    assert_one_line_error(code, err, r"is not empty and fails the check 'a flash-edge bundle.*nothing was deleted")
    assert (d / "thesis.tex").read_text() == "years of work" and leftovers(tmp_path) == []


def test_out_may_not_be_inside_or_be_the_model_source(tiny_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    before = sorted(str(p.relative_to(model)) for p in model.rglob("*"))
    code, err = run_cli(export_cli.main, "--target", "torch", "--model", model, "--out", model, "--force", "--quiet")
    assert_one_line_error(code, err, r"is not empty and fails the check 'a flash-edge bundle")
    code, err = run_cli(export_cli.main, "--target", "torch", "--model", model, "--out", model / "bundles" / "b",
                        "--quiet")
    assert_one_line_error(code, err, r"--out .*/model/bundles/b lies inside the model source .*/model: write the")
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == before  # untouched, no leftovers
    with pytest.raises(InvalidInput, match=r"contains the model source"):
        atomic.ensure_apart(tmp_path, [model])


def test_force_replaces_an_empty_folder_and_a_bundle(tmp_path):
    dest = tmp_path / "b"
    dest.mkdir()
    for tag in ("first", "second"):
        with atomic.atomic_directory(dest, force=True) as work:
            fake_bundle(work / "x", tag)  # built in a sub-folder, moved up:
            for f in (work / "x").iterdir():
                f.rename(work / f.name)
            (work / "x").rmdir()
        assert tag_of(dest) == tag and leftovers(tmp_path) == []


# ------------------------------------------------------------------------- a kill never loses the bundle
def test_the_swap_is_one_atomic_exchange_here(tmp_path):
    a, b = fake_bundle(tmp_path / "a", "a"), fake_bundle(tmp_path / "b", "b")
    assert atomic.exchange(a, b), "renameat2(RENAME_EXCHANGE) is expected on Linux file systems"
    assert (tag_of(a), tag_of(b)) == ("b", "a")


def test_a_kill_between_the_fallback_renames_is_repaired_by_the_next_write(tmp_path):
    """Where the file system cannot exchange, the old bundle is moved into the marked work folder first; a
    kill right then leaves --out missing until the next write to the parent puts the old one back."""
    fake_bundle(tmp_path / "out", "old")
    r = in_child("""
        import os
        from pathlib import Path
        from flash_edge import atomic
        atomic.exchange = lambda a, b: False
        real = os.rename
        def rename(a, b):
            real(a, b)
            if Path(b).name == "old":
                os._exit(9)  # killed between the two renames
        os.rename = rename
        with atomic.atomic_directory(Path("out"), force=True) as work:
            (work / "manifest.json").write_text('{"format": "flash-edge-bundle", "tag": "new"}')
    """, tmp_path)
    assert r.returncode == 9, r.stderr
    left = leftovers(tmp_path)  # the marked work folder, and the lock file the killed writer held
    assert not (tmp_path / "out").exists() and len(left) == 2 and ".out.lock" in left
    with pytest.raises(RuntimeError):  # the next write, even one that fails, repairs first
        with atomic.atomic_directory(tmp_path / "out", force=True):
            raise RuntimeError("export failed")
    assert tag_of(tmp_path / "out") == "old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("when", ["while building", "right after the exchange"])
def test_a_kill_at_any_moment_leaves_the_old_or_the_new_bundle(tmp_path, when):
    fake_bundle(tmp_path / "out", "old")
    r = in_child(f"""
        import os, shutil
        from pathlib import Path
        from flash_edge import atomic
        if {when == "right after the exchange"!r}:
            shutil.rmtree = lambda *a, **k: os._exit(9)
        with atomic.atomic_directory(Path("out"), force=True) as work:
            (work / "manifest.json").write_text('{{"format": "flash-edge-bundle", "tag": "new"}}')
            if {when == "while building"!r}:
                os._exit(9)
    """, tmp_path)
    assert r.returncode == 9, r.stderr
    assert tag_of(tmp_path / "out") == ("old" if when == "while building" else "new")
    assert atomic.clean_leftovers(tmp_path, own=None) and leftovers(tmp_path) == []


# ------------------------------------------------------------------------- leftovers and concurrent writers
def test_killed_exports_are_cleaned_by_the_next_one_and_live_ones_are_left(tmp_path):
    r = in_child("""
        import os
        from pathlib import Path
        from flash_edge import atomic
        with atomic.atomic_directory(Path("killed")) as work:
            (work / "weights.bin").write_bytes(b"x" * 1000)
            os._exit(9)
    """, tmp_path)
    assert r.returncode == 9 and len(leftovers(tmp_path)) == 2  # work folder and lock file
    stranger = tmp_path / ".notes.partial"  # not provably ours: no marker
    stranger.mkdir()
    with child_holding("atomic.atomic_directory(Path('live'))", tmp_path):
        with atomic.atomic_directory(tmp_path / "next") as work:
            (work / "manifest.json").write_text("{}")
        names = leftovers(tmp_path)
        assert not any(n.startswith(".killed.") for n in names)  # removed: its writer is dead
        assert ".notes.partial" in names and any(n.startswith(".live.") and n.endswith(".partial") for n in names)
        with pytest.raises(InvalidInput, match=r"another flash-edge process is writing .*live"):
            with atomic.atomic_directory(tmp_path / "live", force=True):
                pass


def test_a_second_concurrent_export_to_one_out_fails_clearly(tmp_path):
    with child_holding("atomic.write_lock(Path('b'))", tmp_path):
        code, err = run_cli(export_cli.main, "--target", "torch", "--out", tmp_path / "b", "--quiet")
        assert_one_line_error(code, err, r"another flash-edge process is writing .*/b \(it holds .*\.b\.lock\)")
        assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------- flash-generate checks --out first
@pytest.mark.parametrize("make,pattern", [
    (lambda t: (t / "x.png").mkdir(), r"--out .*x\.png is a folder"),
    (lambda t: [(t / "file").write_text("x"), Path("file/x.png")][1], r"cannot write .*: .*file is a file, not a folder"),
])
def test_generate_checks_out_before_generating(torch_bundle, tmp_path, monkeypatch, make, pattern):
    from flash_edge.pipeline import FlashPipeline

    out = make(tmp_path) or Path("x.png")
    monkeypatch.setattr(FlashPipeline, "from_bundle", classmethod(lambda *a, **k: pytest.fail("generated")))
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--out", tmp_path / out)
    assert_one_line_error(code, err, pattern)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: needs an ordinary user")
def test_generate_refuses_a_read_only_folder(torch_bundle, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--out", ro / "x.png")
    assert_one_line_error(code, err, r"ro is not writable")


def test_generate_refuses_a_read_only_file_system(torch_bundle, tmp_path):
    """Runs as any user (CI runs as root): /proc refuses new files to everyone."""
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--out", "/proc/x.png")
    assert_one_line_error(code, err, r"cannot write /proc/x\.png: /proc is not writable")


# ------------------------------------------------------------------------- prompts, seeds, permissions
def test_a_non_utf8_prompt_byte_is_one_line(torch_bundle, tmp_path):
    r = subprocess.run([os.fsencode(Path(sys.executable).parent / "flash-generate"), b"--bundle",
                        os.fsencode(torch_bundle), b"--prompt", b"a red \xff circle", b"--out",
                        os.fsencode(tmp_path / "x.png")], capture_output=True, timeout=300)
    err = r.stderr.decode("utf-8", "replace")
    assert_one_line_error(r.returncode, err, r"prompt is not valid UTF-8 text \(undecodable byte at character 6\)")


@pytest.mark.parametrize("seed,ok", [(0, True), (2**64 - 1, True), (2**64, False), (2**70, False), (-1, False)])
def test_seed_range_is_0_to_2_64_minus_1(torch_bundle, tmp_path, seed, ok):
    from flash_edge.sampler import gaussian_noise

    out = tmp_path / "x.png"
    code, err = run_cli(generate_cli.main, "--bundle", torch_bundle, "--prompt", "x", "--seed", seed, "--out", out,
                        "--quiet")
    if ok:
        assert code == 0 and out.is_file()
        assert gaussian_noise(seed, (4,)).dtype.name == "float32"
    else:
        assert_one_line_error(code, err, r"seed must be from 0 to 2\*\*64 - 1 \(18446744073709551615\), got")
        with pytest.raises(InvalidInput):
            gaussian_noise(seed, (4,))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_bundle_permissions_follow_the_umask(tmp_path, umask):
    from flash_edge.export import export_bundle

    old = os.umask(umask)
    try:
        out = export_bundle("tiny", "torch", tmp_path / "b", skip_parity=True)
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if p.is_dir()}
    file_modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o777 & ~umask} and file_modes == {0o666 & ~umask}
