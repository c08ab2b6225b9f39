"""Helpers the test modules share (imported by name: pytest runs in importlib mode, so each module puts this
folder on ``sys.path``, as for ``manifest_fuzz``)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path


def edit_manifest(bundle: Path, change) -> dict:
    """Apply ``change(manifest)`` to the bundle's manifest (in place) and write it back, as an attacker or a
    careless tool would (no re-hashing); returns the edited manifest."""
    mf = Path(bundle) / "manifest.json"
    m = json.loads(mf.read_text())
    change(m)
    mf.write_text(json.dumps(m))
    return m


def cli_export(*args) -> int:
    """``flash-export --quiet ARGS`` in-process; its exit status."""
    from flash_edge.cli.export import main

    return main(["--quiet", *map(str, args)])


def run_cli(main, *argv) -> tuple[int, str]:
    """Run a command's ``main`` in-process; returns (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    """Exit status 2, no traceback, exactly one ``error:`` line, and it matches ``pattern``."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


def assert_chunk_layout(entry: dict, facts: set[str]) -> None:
    """A chunked component entry (manifest dict) in the one layout every target writes: each chunk lists its
    path, files (all in its own ``chunk{i}/`` folder; together the component's files), I/O and nothing but the
    program facts ``facts``, and the component's options name no program's files."""
    chunks, name = entry["options"]["chunks"], entry["path"]
    assert len(chunks) > 1
    for i, c in enumerate(chunks):
        assert {"path", "files", "inputs", "outputs"} <= set(c) <= {"path", "files", "inputs", "outputs", *facts}, \
            (i, sorted(c))
        assert c["files"] and all(f.startswith(f"{name}/chunk{i}/") for f in c["files"]), c["files"]
        assert c["path"] in c["files"] or all(f.startswith(c["path"] + "/") for f in c["files"])
    assert [f for c in chunks for f in c["files"]] == entry["files"]
    assert not {"path", "files", "data_file", "module_api", "compiled"} & set(entry["options"])  # those are per program
