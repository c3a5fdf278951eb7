"""precision='auto': bf16 only where the CPU computes it natively and a probe finds it faster."""

from __future__ import annotations

import pytest

from clip4str import precision as prec
from clip4str.decoding import DecodeOptions

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_parsed_from_cpuinfo():
    assert prec.cpu_bf16_flags(AVX2_ONLY) == []
    assert prec.cpu_bf16_flags(AVX512_BF16) == ["avx512_bf16"]
    assert prec.cpu_bf16_flags(ARM_BF16) == ["bf16"]


@pytest.fixture
def fresh_choice():
    prec._choose.cache_clear()
    yield
    prec._choose.cache_clear()


def test_auto_is_fp32_without_native_bf16(monkeypatch, fresh_choice):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    choice = prec.choose_precision("cpu")
    assert choice.precision == "fp32" and "no native bf16" in choice.reason


def test_native_bf16_is_chosen_only_when_the_probe_is_faster(monkeypatch, fresh_choice):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(prec, "_matmul_seconds", lambda dtype, repeats=3: 1.0 if dtype is None else 0.7)
    assert prec.choose_precision("cpu").precision == "bf16"
    prec._choose.cache_clear()
    monkeypatch.setattr(prec, "_matmul_seconds", lambda dtype, repeats=3: 1.0 if dtype is None else 1.5)
    slow = prec.choose_precision("cpu")
    assert slow.precision == "fp32" and "0.67x" in slow.reason


def test_training_precision_maps_auto_to_lightning_names(monkeypatch, fresh_choice):
    assert prec.training_precision("bf16-mixed", "cpu") == ("bf16-mixed", "as configured")
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    name, why = prec.training_precision("auto", "cpu")
    assert name == "32-true" and why.startswith("auto:")


def test_recognizer_resolves_auto(monkeypatch, fresh_choice, bpe_path):
    from clip4str.api import Recognizer
    from clip4str.factory import create_model

    tiny_model = create_model("tiny", pretrained=False)

    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    reader = Recognizer(tiny_model, options=DecodeOptions(precision="auto"))
    assert reader.options.precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        DecodeOptions(precision="fp8")
