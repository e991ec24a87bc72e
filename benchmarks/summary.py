#!/usr/bin/env python3
"""One table from the JSON results the benchmarks write with ``--json`` (``make bench``).

Each row is one comparison measured in one run: our throughput, the peer's, the ratio, and
where the benchmark has one, the fraction of the FLOP floor we reach, with what drives the
result on this machine (GEMM rate, page faults, threads). Markdown, so that it pastes into
BENCHMARKS.md as it is.

Run:  python benchmarks/summary.py benchmarks/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def drivers_text(d: dict) -> str:
    parts = []
    if d.get("gemm_gflops_fp32"):
        parts.append(f"GEMM {d['gemm_gflops_fp32']:.0f} GFLOP/s fp32")
    if d.get("gemm_gflops_bf16"):
        parts.append(f"{d['gemm_gflops_bf16']:.0f} bf16")
    faults = d.get("page_faults_per_step")
    if isinstance(faults, dict):
        parts.append("faults/step " + ", ".join(f"{k} {v:.0f}" for k, v in faults.items()))
    if d.get("page_faults_per_audio_s") is not None:
        parts.append(f"faults/audio-s {d['page_faults_per_audio_s']:.0f}")
    if d.get("threads"):
        parts.append(f"{d['threads']} threads")
    return "; ".join(parts)


def rows(result: dict) -> list[list[str]]:
    out = []
    for ours, peer, ratio in result["ratio_values"]:
        if ratio is None:
            out.append([result["benchmark"], ours, peer, "-", "-", "not run", "", ""])
            continue
        floor = result["floor"].get(ours)
        out.append([
            result["benchmark"], ours, peer,
            f"{result['systems'][ours]:.2f} {result['unit']}", f"{result['systems'][peer]:.2f}",
            f"**{ratio:.2f}x**", f"{floor:.0%}" if floor is not None else "", drivers_text(result["drivers"]),
        ])
    return out


def main(paths: list[str]) -> None:
    results = [json.loads(Path(p).read_text()) for p in paths]
    if not results:
        raise SystemExit("summary.py: no results given")
    header = ["benchmark", "w2v system", "peer", "w2v", "peer", "ratio", "of floor", "drivers"]
    table = [header, ["---"] * len(header)] + [r for res in results for r in rows(res)]
    for line in table:
        print("| " + " | ".join(line) + " |")
    machines = {(r["machine"]["cpu"], r["machine"]["cpus"], r["machine"].get("gpu"), r["machine"]["torch"],
                 r["machine"]["commit"]) for r in results}
    for cpu, cpus, gpu, torch, commit in sorted(machines, key=str):
        print(f"\nmachine: {cpu}, {cpus} CPUs{f', {gpu}' if gpu else ''}; torch {torch}; commit {commit}")
    loads = [r["machine"]["load_average"][0] for r in results]
    print(f"load average (1 min) at the end of each benchmark: {', '.join(f'{x:.1f}' for x in loads)}")
    for r in results:
        for note in r.get("notes", []):
            print(f"- {r['benchmark']}: {note}")


if __name__ == "__main__":
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:] else 2)
    main(sys.argv[1:])
