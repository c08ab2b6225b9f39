"""The bundle module's own contract (``flash_edge/bundle.py``): what ``write_manifest`` writes is what
``Bundle.open`` reads back, hashes and sizes are checked as documented (``verify=False`` skips only the
hashes), format versions are read or refused by name, and nothing but the listed files may be there.
Bundles crafted as an attacker would are in test_untrusted_bundles.py; this file is the everyday format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flash_edge import contract
from flash_edge.bundle import MAX_MANIFEST_BYTES, READS, Bundle, ComponentEntry, sha256_file, write_manifest
from flash_edge.errors import BundleError


@pytest.fixture
def bundle(torch_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(torch_bundle, dst)
    return dst


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _largest_file(bundle: Path) -> str:
    files = _manifest(bundle)["files"]
    return max(files, key=lambda rel: files[rel]["size"])


def test_the_manifest_lists_every_file_with_its_true_size_and_hash(torch_bundle):
    b = Bundle.open(torch_bundle)
    on_disk = sorted(p.relative_to(torch_bundle).as_posix() for p in torch_bundle.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(b.manifest["files"]) == on_disk
    for rel, meta in b.manifest["files"].items():
        assert meta == {"size": (torch_bundle / rel).stat().st_size, "sha256": sha256_file(torch_bundle / rel)}
    assert b.manifest["format_version"] == contract.VERSION and contract.VERSION in READS
    for name, entry in b.components.items():  # entries round-trip and agree with the generation's shapes
        assert ComponentEntry(**entry.to_dict()) == entry
        assert entry.to_dict()["inputs"] == b.spec.component_spec(name).io_dict()["inputs"]
        assert entry.to_dict()["outputs"] == b.spec.component_spec(name).io_dict()["outputs"]
        assert set(entry.files) <= set(b.manifest["files"])


def test_write_manifest_then_open_round_trips(bundle):
    """Re-writing the manifest from what was read gives a bundle that opens with the same content."""
    before = Bundle.open(bundle)
    extra = {k: v for k, v in before.manifest.items()
             if k not in ("format", "format_version", "sdk_version", "generation", "components", "files")}
    written = write_manifest(bundle, before.spec, before.components, **extra)
    after = Bundle.open(bundle)
    assert written == after.manifest
    assert after.manifest["files"] == before.manifest["files"]
    assert after.components == before.components and after.spec == before.spec


def test_verify_false_skips_the_hashes_but_not_the_sizes(bundle):
    rel = _largest_file(bundle)
    data = bytearray((bundle / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    (bundle / rel).write_bytes(bytes(data))
    Bundle.open(bundle, verify=False)
    with pytest.raises(BundleError, match=r"does not match its sha256 in the manifest: it is corrupt"):
        Bundle.open(bundle)
    (bundle / rel).write_bytes(bytes(data[:-1]))
    with pytest.raises(BundleError, match=rf"has {len(data) - 1} bytes, the manifest says {len(data)}"):
        Bundle.open(bundle, verify=False)


def test_a_listed_file_that_is_missing_is_named(bundle):
    rel = _largest_file(bundle)
    (bundle / rel).unlink()
    with pytest.raises(BundleError, match=rf"bundle file .*{rel} is missing"):
        Bundle.open(bundle, verify=False)


def test_unlisted_files_are_refused_and_finder_notes_tolerated(bundle):
    (bundle / "transformer" / ".DS_Store").write_bytes(b"\0Bud1")
    (bundle / ".DS_Store").write_bytes(b"\0Bud1")
    Bundle.open(bundle)
    (bundle / "transformer" / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"holds what its manifest does not list: transformer/notes\.txt"):
        Bundle.open(bundle)


@pytest.mark.parametrize("version, readable", [(contract.VERSION, True), (0, False), (max(READS) + 1, False)])
def test_format_versions_are_read_or_refused_by_name(bundle, version, readable):
    """(Format 1, the layout before the app contract's keys, is read too: test_app_contract.py.)"""
    m = _manifest(bundle)
    m["format_version"] = version
    (bundle / "manifest.json").write_text(json.dumps(m))
    if readable:
        assert Bundle.open(bundle).manifest["format_version"] == version
        return
    with pytest.raises(BundleError, match=rf"has format version {version} .*reads versions "
                                          rf"{' and '.join(map(str, READS))}: export the bundle again"):
        Bundle.open(bundle)


@pytest.mark.parametrize("content, pattern", [
    (b"{oops", r"is not valid JSON \(JSONDecodeError"),
    (b"\xff\xfe", r"is not valid JSON \(UnicodeDecodeError"),
    (b'{"format": "something-else"}', r"is not a flash-edge manifest \(format is 'something-else'\)"),
    (b"[1, 2]", r"is not a flash-edge manifest$"),
])
def test_a_manifest_that_is_not_one_is_one_line(bundle, content, pattern):
    (bundle / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError, match=pattern) as e:
        Bundle.open(bundle)
    assert "\n" not in str(e.value)


def test_an_oversized_manifest_is_refused_before_it_is_parsed(bundle):
    with open(bundle / "manifest.json", "ab") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: no 64 MB written
    with pytest.raises(BundleError, match=rf"is larger than {MAX_MANIFEST_BYTES >> 20} MB"):
        Bundle.open(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"does not exist or is not a directory"):
        Bundle.open(tmp_path / "nothing")
    with pytest.raises(BundleError, match=r"is not a flash-edge bundle: it has no manifest\.json"):
        Bundle.open(tmp_path)


def test_file_holds_paths_inside_the_bundle(torch_bundle):
    b = Bundle.open(torch_bundle, verify=False)
    assert b.file("transformer/config.json") == torch_bundle / "transformer" / "config.json"
    for bad in ("../manifest.json", "/etc/passwd", "transformer/../../x"):
        with pytest.raises(BundleError):
            b.file(bad)


def test_write_manifest_refuses_code_and_unwritten_files(bundle):
    b = Bundle.open(bundle)
    (bundle / "transformer" / "hook.py").write_text("print('hi')\n")
    with pytest.raises(BundleError, match=r"refusing to write code files into a bundle: \['transformer/hook\.py'\]"):
        write_manifest(bundle, b.spec, b.components)
    (bundle / "transformer" / "hook.py").unlink()
    entries = b.components
    entries["transformer"].files = [*entries["transformer"].files, "transformer/missing.bin"]
    with pytest.raises(BundleError, match=r"component transformer names files that were not written: "
                                          r"\['transformer/missing\.bin'\]"):
        write_manifest(bundle, b.spec, entries)


def test_a_provisional_manifest_opens_only_without_hashes(bundle):
    """The parity gate's provisional manifest (sizes, all-zero digests) opens with verify=False only."""
    b = Bundle.open(bundle)
    written = write_manifest(bundle, b.spec, b.components, hash_files=False)
    assert {m["sha256"] for m in written["files"].values()} == {"0" * 64}
    Bundle.open(bundle, verify=False)
    with pytest.raises(BundleError, match=r"does not match its sha256"):
        Bundle.open(bundle)
