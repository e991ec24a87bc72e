"""Keep freed CPU memory for reuse instead of handing it back to the kernel after every tensor.

Why: glibc's malloc serves every block over 32 MB (the most ``M_MMAP_THRESHOLD`` may be)
with a fresh ``mmap`` and returns it with ``munmap`` when freed. A CPU training step of
wav2vec 2.0 BASE allocates and frees hundreds of such activations (the first conv
layers' outputs are 100 MB each), so every step pays for zero-filling and faulting in
gigabytes of new pages: on 2 cores a third of the step went to the kernel (sys time 20 s
of 87 s CPU for 7 steps). Telling glibc to grow the heap instead of mapping, and never to
trim it, makes freed blocks reusable: after a few steps a step faults in no new pages
(tests/test_malloc.py), and the BASE step got 1.3x faster (benchmarks/
bench_pretrain_step.py, BENCHMARKS.md). This is what jemalloc or tcmalloc through
``LD_PRELOAD`` (as Intel's PyTorch CPU tuning guide advises) achieve, without a
dependency.

The cost: the process keeps its peak heap until it exits, which is what a training
process wants anyway. Nothing changes when

* the C library is not glibc (macOS, musl): there is no ``mallopt`` to call;
* ``W2V_MALLOC=system`` is set, or the user already tunes malloc themselves
  (``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment, or jemalloc /
  tcmalloc preloaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_done = False


def _user_tunes_malloc() -> bool:
    env = os.environ
    if env.get("W2V_MALLOC", "").lower() == "system":
        return True
    if any(k in env for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return True
    preload = env.get("LD_PRELOAD", "")
    return "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload


def keep_freed_memory() -> bool:
    """Make glibc reuse freed heap memory instead of mapping and unmapping large blocks.

    Idempotent, process-wide, and inherited by forked DataLoader workers. Call it before
    the heavy CPU work starts (the trainer does, when it runs on CPU).

    Returns:
        True when the settings were applied (now or by an earlier call), False when
        left alone (not glibc, or the user's own malloc settings).

    Example:
        >>> from w2vtools.malloc import keep_freed_memory
        >>> keep_freed_memory()  # doctest: +SKIP
        True
    """
    global _done
    if _done:
        return True
    if _user_tunes_malloc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # never mmap (so large blocks come from the heap and are reused), never trim the
    # heap's top, and grow it by 1 GB of address space at a time (untouched pages cost
    # nothing) to make fewer brk calls
    ok = mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1) and mallopt(_M_TOP_PAD, 1 << 30)
    if not ok:
        log.debug("mallopt refused the settings; keeping the C library's defaults")
        return False
    _done = True
    log.debug("glibc malloc: large blocks from the heap, no trimming (W2V_MALLOC=system to disable)")
    return True
