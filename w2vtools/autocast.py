"""Autocast at inference: its dtype per device, and whether bfloat16 pays on this CPU (the one
check behind ``--amp`` and ``run.amp=bf16``).

On a CPU with bf16 instructions (AVX512-BF16, AMX) autocast runs the matmuls and
convolutions in bfloat16 about twice as fast as float32 or more. On one without them
(AVX2 only, as on many cloud VMs and laptops) PyTorch falls back to a single-threaded
bf16 matmul that is far *slower* than float32 (BENCHMARKS.md, "Current"), and
a user who asked for speed would get a job that crawls. So
before a command autocasts on the CPU it measures one small product in each dtype
and warns when bf16 is the slower one.

Example:
    >>> cpu_bf16_slowdown() > 0
    True
"""

from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger("w2v")

#: bf16 slower than float32 by more than this is a fallback, not a slower kernel of the same kind
SLOWDOWN_WARNING = 2.0


@functools.cache
def cpu_bf16_slowdown() -> float:
    """How many times longer a 256 x 256 bfloat16 matmul takes than a float32 one here (best of 3)."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: the first call picks and loads a kernel
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return max(min(times), 1e-9)

    return best(a.bfloat16(), b.bfloat16()) / best(a, b)


def inference_dtype(device_type: str) -> torch.dtype:
    """The autocast dtype of ``--amp`` at inference on ``device_type``: float16 on CUDA, as
    fairseq and transformers run it there, bfloat16 on a CPU (which has no fast float16).

    Example:
        >>> inference_dtype("cuda"), inference_dtype("cpu")
        (torch.float16, torch.bfloat16)
    """
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def warn_if_bf16_is_slow(device: torch.device | str, setting: str) -> None:
    """Log a warning when ``setting`` (bf16 autocast) would run on a CPU without bf16 instructions.

    Args:
        device: where the model runs; only a CPU is checked.
        setting: the option as the user wrote it, for the message (``--amp``, ``run.amp=bf16``).
    """
    if torch.device(device).type != "cpu":
        return
    slowdown = cpu_bf16_slowdown()
    if slowdown > SLOWDOWN_WARNING:
        log.warning("%s: on this CPU a bfloat16 matmul takes %.0fx as long as a float32 one (no bf16 "
                    "instructions), so autocast will be slower, not faster; leave it off here", setting, slowdown)
