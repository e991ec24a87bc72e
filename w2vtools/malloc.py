"""Keep freed CPU memory for reuse instead of handing it back to the kernel after every tensor.

Why: glibc's malloc serves every block over 32 MB (the most ``M_MMAP_THRESHOLD`` may be)
with a fresh ``mmap`` and returns it with ``munmap`` when freed. A CPU training step of
wav2vec 2.0 BASE allocates and frees hundreds of such activations (the first conv
layers' outputs are 100 MB each), so every step pays for zero-filling and faulting in
gigabytes of new pages: on 2 cores a third of the step went to the kernel. Telling glibc
to grow the heap instead of mapping, and never to trim it, makes freed blocks reusable:
after a few steps a step faults in no new pages (tests/test_malloc.py), and the BASE step
got faster (benchmarks/bench_pretrain_step.py; the numbers are in BENCHMARKS.md). Under bf16
autocast the mix of block sizes fragments the heap, which grows in spells for tens of steps
before it settles, as it does with glibc's defaults. This is what jemalloc or tcmalloc through
``LD_PRELOAD`` (as Intel's PyTorch CPU tuning guide advises) achieve, without a
dependency.

``featurize`` on a CPU asks for one more thing, ``one_arena=True``: its compute threads
(Python stream threads and torch's intra-op threads) then allocate from glibc's main
heap too, instead of per-thread arenas whose large blocks would still be mapped and
unmapped (``M_ARENA_MAX`` = 1; the arena lock costs nothing next to a BASE forward).
There this cut the system time and kept the peak RSS below the peers' (BENCHMARKS.md).

The cost: the process keeps its peak heap until it exits, which is what a training or
featurizing process wants anyway. Nothing changes when

* the C library is not glibc (macOS, musl): there is no ``mallopt`` to call;
* ``W2V_MALLOC=system`` is set, or the user already tunes malloc themselves
  (any ``MALLOC_*`` variable such as ``MALLOC_ARENA_MAX`` or ``MALLOC_TRIM_THRESHOLD_``,
  ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``, or jemalloc / tcmalloc / mimalloc
  preloaded).
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
_M_ARENA_MAX = -8

_done = False
_one_arena = False


def _user_tunes_malloc() -> bool:
    env = os.environ
    if env.get("W2V_MALLOC", "").lower() == "system":
        return True
    if any(k.startswith("MALLOC_") for k in env) or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return True
    preload = env.get("LD_PRELOAD", "")
    return "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload


def keep_freed_memory(one_arena: bool = False) -> bool:
    """Make glibc reuse freed heap memory instead of mapping and unmapping large blocks.

    Idempotent, process-wide, and inherited by forked DataLoader workers. Call it before
    the heavy CPU work starts (:func:`w2vtools.train.launch.set_process_state` does for a
    training process on CPU; featurize too).

    Args:
        one_arena: also make threads that have not allocated yet share the main heap
            (for work spread over threads, as featurize's streams are). Call it before
            the process starts threads that allocate (torch's intra-op pool starts with
            the first parallel op): glibc hands new threads the arenas existing threads
            made, and those map and unmap their large blocks (BENCHMARKS.md measures
            a call made first against one made after a model's warm-up forward).

    Returns:
        True when the settings were applied (now or by an earlier call), False when
        left alone (not glibc, or the user's own malloc settings).

    Example:
        >>> from w2vtools.malloc import keep_freed_memory
        >>> keep_freed_memory()  # doctest: +SKIP
        True
    """
    global _done, _one_arena
    if _done and (_one_arena or not one_arena):
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
    if one_arena:
        # threads already attached to an arena keep it; new ones share the existing ones
        _one_arena = bool(mallopt(_M_ARENA_MAX, 1))
    if _done:
        return True
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


def is_keeping_freed_memory() -> bool:
    """True once :func:`keep_freed_memory` has applied its settings in this process."""
    return _done
