"""CPU feature detection (flash_edge/cpu.py) and the ONNX backend's warning for signed int8 weights on x86 CPUs
without VNNI, where ONNX Runtime's u8 x s8 kernels saturate (measured: image 26 dB instead of 52)."""

import warnings

import pytest

from flash_edge import cpu
from flash_edge.bundle import ComponentEntry
from flash_edge.errors import DeviceWarning, FlashWarning
from flash_edge.runtimes.onnx import signed_int8_weights, warn_signed_weights

AVX2_ONLY = "flags\t\t: fpu sse sse2 avx avx2 fma\n"
VNNI = "flags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile\n"


def fake_cpu(monkeypatch, tmp_path, machine, text):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + text)
    real_path = cpu.Path
    monkeypatch.setattr(cpu, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)


@pytest.mark.parametrize("machine,text,expected", [
    ("x86_64", AVX2_ONLY, True), ("x86_64", VNNI, False), ("aarch64", "Features\t: fp asimd\n", False),
    ("x86_64", "model name\t: no flags line\n", False)])  # unknown flags: no claim
def test_x86_without_vnni(monkeypatch, tmp_path, machine, text, expected):
    fake_cpu(monkeypatch, tmp_path, machine, text)
    assert cpu.x86_without_vnni() is expected


def test_flags_keep_only_kernel_flags_in_order(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", VNNI)
    assert cpu.flags() == ["avx2", "avx512f", "avx512_vnni", "amx_tile", "fma"]


@pytest.mark.parametrize("options,expected", [
    ({"quantization": {"weights": "s8 per-channel"}}, True),
    ({"quantization": {"weights": "u8 per-channel"}}, False),
    ({"chunks": [{"path": "c0.onnx", "quantization": {"weights": "u8 per-channel"}},
                 {"path": "c1.onnx", "quantization": {"weights": "s8 per-channel"}}]}, True),
    ({"chunks": "not a list", "quantization": ["not", "a", "dict"]}, False),  # untrusted shapes: no crash
    (None, False), ({}, False)])
def test_signed_int8_weights_reads_component_and_chunks(options, expected):
    assert signed_int8_weights(options) is expected


def entry(precision, weights):
    return ComponentEntry(target="onnx", precision=precision, path="m.onnx", files=["m.onnx"], inputs=[],
                          outputs=[], options={"quantization": {"weights": f"{weights} per-channel"}})


def test_signed_weights_on_a_cpu_without_vnni_warn_once_with_the_fix(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", AVX2_ONLY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_signed_weights("transformer", entry("int8", "s8"), tmp_path)
        warn_signed_weights("transformer", entry("int8", "s8"), tmp_path)  # re-opened (low policy): said once
        warn_signed_weights("text_encoder", entry("int8", "u8"), tmp_path)
    assert len(caught) == 1 and issubclass(caught[0].category, DeviceWarning)
    assert issubclass(DeviceWarning, FlashWarning)  # the CLI prints FlashWarnings as one line
    message = str(caught[0].message)
    assert message.startswith("transformer: ") and "--int8-weights u8" in message


def test_signed_weights_on_a_vnni_cpu_do_not_warn(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", VNNI)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_signed_weights("transformer", entry("int8", "s8"), tmp_path)
