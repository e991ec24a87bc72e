"""How many CPU threads a command uses by default: its share of the machine, not all of it.

Kaldi and lhotse run one thread per job and get parallelism from jobs; a tool run
by hand wants the machine. :func:`default_threads` sits between: the CPUs this
process may use (its affinity mask: a Slurm or cgroup allocation) less those other
processes keep busy (the 1-minute load average), at least 1, so a second job beside
a running one takes what is free instead of halving both. ``$OMP_NUM_THREADS`` (what
schedulers and Kaldi's ``queue.pl --num-threads`` set) wins when it is set.

Example:
    >>> default_threads() >= 1
    True
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1.

    Example:
        >>> available_cpus() >= 1
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(environ: dict | None = None, load: float | None = None) -> int:
    """``$OMP_NUM_THREADS`` if set, else the available CPUs less the busy ones (1-minute load), at least 1.

    Args:
        environ: the environment (default ``os.environ``).
        load: the 1-minute load average (default: ``os.getloadavg()``; none known: 0).

    Example:
        >>> default_threads({}, load=3.4) == max(1, available_cpus() - 3)
        True
        >>> default_threads({"OMP_NUM_THREADS": "2"})
        2
    """
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    cpus = available_cpus()
    return max(1, min(cpus, cpus - int(round(load))))
