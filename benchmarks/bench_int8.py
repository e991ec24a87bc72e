#!/usr/bin/env python3
"""int8 against float32 on a CPU: ``w2v featurize --int8`` speed and feature error, ``w2v decode --int8`` WER.

* speed: :func:`w2vtools.featurize.featurize` end to end (read WAVs, batch, compute, write HDF5;
  the int8 run's quantization of the model included) of a wav2vec 2.0 BASE architecture with
  one set of seeded random weights, float32 and ``int8=True``, on ``--num-utts`` utterances of
  2-15 s made from real LJ Speech clips (as ``bench_featurize.py`` makes them), ``--threads``
  threads with featurize's defaults otherwise. The corpus is cut into ``--rounds`` rounds, and
  in each round both run their share in a fresh process, one after the other, so load from
  other processes falls on both alike;
* the model alone: ``extract_features`` (and its feature encoder) on the first ``--error-utts``
  utterances, each alone, in this process, best of ``--repeats`` alternating passes: the
  kernels' gain without audio decoding, padding, HDF5 writing and quantization time;
* feature error: on the first ``--error-utts`` utterances, each alone, every layer of the int8
  model (0 = the Transformer input, the feature encoder's projected output) against float32:
  relative L2 error ``||int8 - f32|| / ||f32||`` and the mean cosine similarity of frames
  (median and worst over the utterances);
* WER (with ``--ctc CKPT --test DATA``): :func:`w2vtools.decode.decode` (viterbi) of a Kaldi
  data dir with a CTC checkpoint, float32 and int8, each in a fresh process: WER against
  ``DATA/text``, utterances whose hypotheses differ, and the wall time of the whole call.
  Without a public fine-tuned model offline, the digits recipe's tiny CTC model
  (``recipes/digits``, ``exp/w2v2_ft_100pct``) on the FSDD test set is what BENCHMARKS.md reports.

Prints audio-seconds per second for each, the int8/float32 ratios, the error table and
whether the CPU has VNNI (8-bit activations; 7-bit without: :mod:`w2vtools.models.int8`).

Run:  python benchmarks/bench_int8.py [--num-utts 40] [--threads 2] [--ctc CKPT --test DATA] [--json PATH]
This is a benchmark, not a test: speeds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_featurize import make_corpus  # noqa: E402
from common import add_common_args, Result, shared_data  # noqa: E402

PRECISIONS = ("float32", "int8")


def base_model(preset: str = "base"):
    """The seeded random wav2vec 2.0 model every part of the benchmark uses."""
    import torch

    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    torch.manual_seed(0)
    return model_class_for("wav2vec2")(get_preset("wav2vec2", preset)).eval()


def featurize_child(args) -> None:
    """Time featurize (float32 or int8) on one round's utterances in this fresh process; print JSON."""
    import torch

    from w2vtools.encoders import encoder_from_module
    from w2vtools.featurize import featurize
    from w2vtools.malloc import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory(one_arena=True)  # what featurize does before it loads a model
    model = base_model(args.preset)
    with torch.inference_mode():
        model.extract_features(torch.zeros(1, 32000))  # warm-up of the float32 kernels, not timed
    enc = encoder_from_module(model, f"wav2vec2-{args.preset}(random)", "wav2vec2")
    t0 = time.perf_counter()
    summary = featurize(args.scp, args.out, model=enc, threads=args.threads, progress=False,
                        int8=args.child == "int8")
    print(json.dumps({"wall": time.perf_counter() - t0, "utterances": summary.utterances}))


def decode_child(args) -> None:
    """Decode a data dir with a CTC checkpoint (float32 or int8) in this fresh process; print JSON."""
    import torch

    from w2vtools.decode import decode

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = decode(corpus=args.scp, model=args.ctc, output=args.out, int8=args.child_decode == "int8")
    print(json.dumps({"wall": time.perf_counter() - t0, "audio_s": summary.audio_seconds}))


def run_child(*argv: str) -> dict:
    p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def speed(args, tmp: Path, scp: Path) -> dict[str, float]:
    """Wall seconds of featurize per precision, interleaved rounds of fresh processes."""
    lines = scp.read_text().splitlines()
    rounds = max(1, min(args.rounds, len(lines)))
    wall = dict.fromkeys(PRECISIONS, 0.0)
    for r in range(rounds):
        sub = tmp / f"round{r}.scp"
        sub.write_text("".join(lines[i] + "\n" for i in range(r, len(lines), rounds)))
        order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]  # neither always runs first
        for precision in order:
            out = run_child("--child", precision, "--scp", str(sub), "--out", str(tmp / f"{precision}{r}.h5"),
                            "--threads", str(args.threads), "--preset", args.preset)
            wall[precision] += out["wall"]
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v:.1f} s" for k, v in wall.items())
              + " (load average %.1f %.1f %.1f)" % os.getloadavg(), flush=True)
    return wall


def model_speed(args, scp: Path) -> dict[str, dict[str, float]]:
    """Seconds per audio second of the model alone (no I/O, no padding) on the first ``--error-utts``
    utterances, each alone: the feature encoder, and the whole ``extract_features``; the best of
    ``--repeats`` passes, float32 and int8 passes alternating, so load falls on both alike.

    Wall time, and CPU time of this process (``time.process_time``): on a loaded machine the
    CPU time is what a pass cost, the wall time also counts the waits for a core.
    """
    import torch

    from w2vtools.audio import load_audio
    from w2vtools.models.int8 import quantize_int8

    torch.set_num_threads(args.threads)
    models = {"float32": base_model(args.preset)}
    models["int8"] = copy.deepcopy(models["float32"])
    quantize_int8(models["int8"])
    waves = [torch.from_numpy(load_audio(line.split(" ", 1)[1], sample_rate=16000))[None]
             for line in scp.read_text().splitlines()[: args.error_utts]]
    audio_s = sum(w.shape[1] for w in waves) / 16000
    parts = [f"{part} {clock}" for part in ("feature encoder", "whole model") for clock in ("wall", "cpu")]
    best = {p: dict.fromkeys(parts, float("inf")) for p in PRECISIONS}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for p, model in models.items():
                for part, fn in (("feature encoder", model.feature_extractor), ("whole model", model.extract_features)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    for w in waves:
                        fn(w)
                    best[p][f"{part} wall"] = min(best[p][f"{part} wall"], (time.perf_counter() - t0) / audio_s)
                    best[p][f"{part} cpu"] = min(best[p][f"{part} cpu"], (time.process_time() - c0) / audio_s)
    return best


def feature_error(args, scp: Path) -> list[dict]:
    """Per layer: relative L2 error and mean frame cosine of int8 against float32 (median, worst)."""
    import torch

    from w2vtools.audio import load_audio
    from w2vtools.models.int8 import quantize_int8

    torch.set_num_threads(args.threads)
    model = base_model(args.preset)
    quantized = copy.deepcopy(model)
    quantize_int8(quantized)
    rel: list[list[float]] = []
    cos: list[list[float]] = []
    for line in scp.read_text().splitlines()[: args.error_utts]:
        wave = torch.from_numpy(load_audio(line.split(" ", 1)[1], sample_rate=16000))[None]
        with torch.inference_mode():
            ref = model.extract_features(wave, output="layer", layer="all").features
            out = quantized.extract_features(wave, output="layer", layer="all").features
        rel.append([float((o - r).norm() / r.norm()) for o, r in zip(out, ref)])
        cos.append([float(torch.nn.functional.cosine_similarity(o[0], r[0], dim=-1).mean()) for o, r in zip(out, ref)])
    rel_a, cos_a = np.array(rel), np.array(cos)
    return [{"layer": k, "rel_l2_median": float(np.median(rel_a[:, k])), "rel_l2_max": float(rel_a[:, k].max()),
             "cosine_median": float(np.median(cos_a[:, k])), "cosine_min": float(cos_a[:, k].min())}
            for k in range(rel_a.shape[1])]


def wer(args, tmp: Path) -> dict:
    """WER, differing hypotheses and decode speed of the CTC checkpoint, float32 and int8."""
    from w2vtools.formats.text import read_text_table
    from w2vtools.score import score_files

    out: dict = {}
    for precision in PRECISIONS:
        hyp = tmp / f"hyp_{precision}.txt"
        r = run_child("--child-decode", precision, "--scp", str(args.test), "--ctc", str(args.ctc),
                      "--out", str(hyp), "--threads", str(args.threads))
        result = score_files(str(Path(args.test) / "text"), str(hyp))
        out[precision] = {"wer": result.error_rate, "wall": r["wall"], "audio_s": r["audio_s"],
                          "line": result.format().splitlines()[0]}
    hyps = [read_text_table(str(tmp / f"hyp_{p}.txt")) for p in PRECISIONS]
    out["differing_hypotheses"] = sum(hyps[0].get(u) != h for u, h in hyps[1].items())
    out["utterances"] = len(hyps[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-utts", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="base", choices=["base", "large", "tiny"])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (spreads machine load evenly)")
    ap.add_argument("--error-utts", type=int, default=8,
                    help="utterances for the model-alone speed and the per-layer feature error")
    ap.add_argument("--skip-featurize", action="store_true", help="only the model-alone speed, errors and WER")
    ap.add_argument("--repeats", type=int, default=3, help="passes of the model-alone timing (the best counts)")
    ap.add_argument("--data", type=Path, default=shared_data())
    ap.add_argument("--ctc", type=Path, default=None, help="a CTC checkpoint for the WER part")
    ap.add_argument("--test", type=Path, default=None, help="a Kaldi data dir (wav.scp, text) for the WER part")
    add_common_args(ap)
    ap.add_argument("--child", choices=PRECISIONS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-decode", choices=PRECISIONS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return featurize_child(args)
    if args.child_decode:
        return decode_child(args)
    if (args.ctc is None) != (args.test is None):
        raise SystemExit("--ctc and --test go together")

    import torch

    from w2vtools.audio import load_audio
    from w2vtools.models.int8 import full_range_activations, onednn_available

    tmp = Path(tempfile.mkdtemp(prefix="w2v-bench-int8-"))
    scp = make_corpus(args.data / "ljspeech", tmp / "audio", args.num_utts)
    audio_s = sum(len(load_audio(line.split(" ", 1)[1], sample_rate=16000))
                  for line in scp.read_text().splitlines()) / 16000
    vnni = full_range_activations()
    kernels = "oneDNN" if onednn_available() else f"fbgemm (engine {torch.backends.quantized.engine})"
    print(f"inputs: {args.num_utts} utterances, {audio_s:.1f} s of audio (2-15 s each), {args.threads} threads, "
          f"torch {torch.__version__}, int8 kernels {kernels}, VNNI {vnni} "
          f"({'8' if vnni else '7'}-bit activations); load average at the start %.1f %.1f %.1f" % os.getloadavg())

    speeds: dict[str, float] = {}
    ratios = [("model alone int8", "model alone float32")]
    if not args.skip_featurize:
        wall = speed(args, tmp, scp)
        speeds.update({f"featurize {p}": audio_s / wall[p] for p in PRECISIONS})
        print(f"\n{'system':24s} {'wall s':>8s} {'audio-s/s':>10s}")
        for p in PRECISIONS:
            print(f"featurize {p:14s} {wall[p]:8.1f} {audio_s / wall[p]:10.2f}")
        print(f"ratio featurize int8 / float32: {wall['float32'] / wall['int8']:.2f}x")
        ratios.insert(0, ("featurize int8", "featurize float32"))

    model = model_speed(args, scp)
    print(f"\nthe model alone, {args.error_utts} utterances each alone, best of {args.repeats} "
          "(s per audio-s; ratio float32 / int8):")
    for part in ("feature encoder", "whole model"):
        for clock in ("wall", "cpu"):
            key = f"{part} {clock}"
            print(f"  {key:20s} float32 {model['float32'][key]:.4f}  int8 {model['int8'][key]:.4f}  "
                  f"{model['float32'][key] / model['int8'][key]:.2f}x")

    errors = feature_error(args, scp)
    print(f"\nint8 features against float32, {args.error_utts} utterances alone, wav2vec 2.0 {args.preset} "
          "(random weights):")
    print(f"{'layer':>5s} {'rel L2 median':>14s} {'rel L2 max':>11s} {'cosine median':>14s} {'cosine min':>11s}")
    for e in errors:
        print(f"{e['layer']:5d} {e['rel_l2_median']:14.4f} {e['rel_l2_max']:11.4f} {e['cosine_median']:14.5f} "
              f"{e['cosine_min']:11.5f}")

    for p in PRECISIONS:
        speeds[f"model alone {p}"] = 1.0 / model[p]["whole model wall"]
    drivers = {"threads": args.threads, "audio_s": audio_s, "vnni": vnni, "int8_kernels": kernels, "preset": args.preset,
               "model_alone_s_per_audio_s": model, "feature_error": errors}
    if args.ctc is not None:
        w = wer(args, tmp)
        print(f"\nWER of {args.ctc} on {args.test} ({w['utterances']} utterances, viterbi):")
        for p in PRECISIONS:
            speeds[f"decode {p}"] = w[p]["audio_s"] / w[p]["wall"]
            print(f"  {p:8s} {w[p]['line']}   (decode call {w[p]['wall']:.1f} s)")
        print(f"  hypotheses that differ: {w['differing_hypotheses']} of {w['utterances']}")
        print(f"ratio decode int8 / float32: {w['float32']['wall'] / w['int8']['wall']:.2f}x")
        ratios.append(("decode int8", "decode float32"))
        drivers["wer"] = w
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    Result("int8", "audio-s/s", speeds,
           ratios=ratios, drivers=drivers,
           notes=["whole featurize/decode call per round in a fresh process; int8 quantization included"]
           ).write(args.json, args.threads)


if __name__ == "__main__":
    main()
