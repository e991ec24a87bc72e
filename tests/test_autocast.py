"""bf16 autocast on a CPU without bf16 instructions is slower, and the commands that autocast say so."""

from __future__ import annotations

import logging
import math
import platform
from pathlib import Path

import pytest

from w2vtools import autocast
from w2vtools.runner import Runner


def _cpu_flags() -> set[str] | None:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_measured_bf16_slowdown_agrees_with_the_cpu_flags():
    slowdown = autocast.cpu_bf16_slowdown()
    assert math.isfinite(slowdown) and slowdown > 0 and autocast.cpu_bf16_slowdown() == slowdown  # measured once
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("CPU flags are read from /proc/cpuinfo on x86 Linux only")
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert slowdown < autocast.SLOWDOWN_WARNING
    elif "avx_ne_convert" not in flags:  # AVX2 only: the fallback
        assert slowdown > autocast.SLOWDOWN_WARNING


def _runner(amp: bool, device: str = "cpu") -> Runner:
    return Runner(lambda x, m: (x[:, ::10, None], None), num_frames=lambda n: (n + 9) // 10, sample_rate=100,
                  frame_shift=0.1, amp=amp, device=device)


@pytest.mark.parametrize("slowdown, warns", [(150.0, True), (0.5, False)])
def test_amp_on_a_cpu_warns_only_where_bf16_is_the_slower(monkeypatch, caplog, slowdown, warns):
    monkeypatch.setattr(autocast, "cpu_bf16_slowdown", lambda: slowdown)
    with caplog.at_level(logging.WARNING, logger="w2v"):
        _runner(amp=True)
        _runner(amp=False)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == int(warns)
    if warns:
        assert messages[0].startswith("--amp: on this CPU a bfloat16 matmul takes 150x as long as a float32 one")


def test_no_measurement_off_the_cpu(monkeypatch):
    monkeypatch.setattr(autocast, "cpu_bf16_slowdown", lambda: pytest.fail("measured for a GPU"))
    autocast.warn_if_bf16_is_slow("cuda", "--amp")
