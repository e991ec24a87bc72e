"""What every benchmark shares: where the peers are, the machine facts that drive a ratio, and
one JSON result per run that ``benchmarks/summary.py`` (``make bench``) turns into one table.

A ratio between two systems on one machine is only comparable to the same ratio on another
machine when the things that drive it are known, so every result records them: the float32
GEMM rate the floor is computed from, the threads, the minor page faults the process tree took
(the kernel's page zeroing is what the malloc work avoids, and its cost differs between VMs),
the load average, the CPU model, torch, and the commit.

Example:
    >>> result = Result("score", "pairs/s", {"ours": 2.0e5, "jiwer": 1.0e5})   # doctest: +SKIP
    >>> result.ratio("ours", "jiwer")                                         # doctest: +SKIP
    2.0
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("W2V_PEERS") or REPO / ".peers")


def shared_data() -> Path:
    """The shared corpora: ``$W2V_SHARED_DATA``, else ../shared/data beside the checkout (as the tests)."""
    return Path(os.environ.get("W2V_SHARED_DATA") or REPO.parent / "shared" / "data")


def fairseq_python(option: str | None = None) -> str | None:
    """The interpreter of the fairseq venv: ``--fairseq-python``, ``$W2V_FAIRSEQ_PYTHON``, then
    ``.peers/fairseq/bin/python`` (what ``benchmarks/setup_peers.sh`` builds); None when absent."""
    for candidate in (option, os.environ.get("W2V_FAIRSEQ_PYTHON"), str(PEERS / "fairseq" / "bin" / "python")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def add_common_args(ap) -> None:
    """``--json PATH``: also write the result as JSON (``make bench`` collects them)."""
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the result (numbers, ratios, floor fraction, machine facts) as JSON")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes); ``$W2V_COMMIT`` for a copy without .git."""
    if os.environ.get("W2V_COMMIT"):
        return os.environ["W2V_COMMIT"]
    p = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (p.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def page_faults() -> int:
    """Minor page faults so far of this process and its waited-for children."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt + resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


def machine_facts(threads: int | None = None) -> dict:
    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version = gpu = None
    return {
        "cpu": cpu_model(),
        "gpu": gpu,
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch_version,
        "commit": commit(),
        "page_faults": page_faults(),
    }


@dataclass
class Result:
    """One benchmark run: throughput per system (higher is better), ratios, floor, drivers."""

    benchmark: str
    unit: str
    systems: dict[str, float]
    ratios: list[tuple[str, str]] = field(default_factory=list)  # (ours, peer) pairs to report
    floor: dict[str, float] = field(default_factory=dict)  # system -> fraction of the floor reached
    drivers: dict = field(default_factory=dict)  # GEMM rate, faults per step, ...
    notes: list[str] = field(default_factory=list)

    def ratio(self, ours: str, peer: str) -> float | None:
        if ours in self.systems and peer in self.systems and self.systems[peer] > 0:
            return self.systems[ours] / self.systems[peer]
        return None

    def write(self, path: str | None, threads: int | None = None) -> None:
        if not path:
            return
        data = asdict(self)
        data["ratio_values"] = [[o, p, self.ratio(o, p)] for o, p in self.ratios]
        data["machine"] = machine_facts(threads)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        print(f"result written to {path}", file=sys.stderr)
