"""`trainer.precision=auto` picks bf16 only where the hardware computes it."""

from __future__ import annotations

import torch

from lit_ft import precision


def test_explicit_precision_is_kept():
    assert precision.resolve_precision("16-mixed", "gpu") == ("16-mixed", "as configured")


def test_cpu_without_bf16_units_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    chosen, why = precision.resolve_precision("auto", "auto")
    assert chosen == "32-true" and "emulated" in why


def test_cpu_with_amx_uses_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert precision.resolve_precision("auto", "cpu") == ("bf16-mixed", "the CPU has amx_bf16")


def test_gpu_choice_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve_precision("auto", "auto")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve_precision("auto", "gpu")[0] == "32-true"
    assert precision.resolve_precision("auto", "cpu")[0] in ("32-true", "bf16-mixed")  # CPU path


def test_this_machine_reads_its_flags():
    assert isinstance(precision.cpu_flags(), set)
