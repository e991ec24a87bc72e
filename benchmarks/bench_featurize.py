#!/usr/bin/env python3
"""Featurize speed: ``w2v featurize`` vs Hugging Face transformers and torchaudio, same weights.

Same inputs, same thread count (2 by default), each system in its own fresh process:

* inputs: ``--num-utts`` utterances of 2-15 s (default 100), made by concatenating
  real LJ Speech clips (../shared/data) at 16 kHz, written as WAV files under a
  temporary folder (so every system starts from the same samples);
* model: a wav2vec 2.0 BASE architecture with one set of (seeded random) weights,
  exported to a Hugging Face folder (``Wav2Vec2Model.from_pretrained``) and
  imported into torchaudio (``import_huggingface_model``); all three give the last
  Transformer layer, and the script checks they agree numerically;
* ours: :func:`w2vtools.featurize.featurize` end to end (read WAV files, batch,
  compute, write an HDF5 file) with its defaults for ``--threads`` T: T concurrent
  streams of single-threaded ops (``--streams``; ``--compare-streams`` also times one
  stream with T-threaded ops, the peers' way of using the cores); peers: the documented per-utterance call on
  audio already in memory (BASE uses group norm, which both peers apply over padding,
  so one utterance per call is their correct usage), under ``torch.inference_mode``;
* processes: the corpus is cut into ``--rounds`` rounds, and in each round every
  system runs its share in a fresh Python process, one after the other. Fresh
  processes keep one system's process-wide settings from helping or hurting another:
  featurize tunes glibc malloc (w2vtools/malloc.py), which would also speed up peers
  run after it in the same process.

Prints audio-seconds per second for each, our ratio to each peer, the distance to
the FLOP floor (``--gflops-per-audio-s``, about 14 GFLOP per audio second, at the
machine's float32 GEMM rate, measured in its own process unless ``--matmul-gflops``
gives it), and with
``--memory`` our peak RSS for growing corpus sizes (each run in a fresh process).

Run:  python benchmarks/bench_featurize.py [--num-utts 100] [--threads 2] [--memory]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
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

from common import add_common_args, page_faults, Result, shared_data  # noqa: E402


def make_corpus(lj_dir: Path, out: Path, n: int, seed: int = 0) -> Path:
    """``n`` WAVs of 2-15 s (uniform), built from consecutive LJ Speech clips; returns wav.scp."""
    import soundfile as sf

    from w2vtools.audio import load_audio

    clips = [load_audio(str(p), sample_rate=16000) for p in sorted((lj_dir / "wavs").glob("*.flac"))]
    if not clips:
        raise SystemExit(f"no LJ Speech clips in {lj_dir}/wavs")
    stream = np.concatenate(clips)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    pos = 0
    for i in range(n):
        length = int(rng.uniform(2.0, 15.0) * 16000)
        if pos + length > len(stream):
            pos = int(rng.integers(0, len(stream) - length))
        wav = stream[pos : pos + length]
        pos += length
        path = out / f"utt{i:04d}.wav"
        sf.write(path, wav, 16000, subtype="PCM_16")
        lines.append(f"utt{i:04d} {path}\n")
    scp = out / "wav.scp"
    scp.write_text("".join(lines))
    return scp


def build_models(tmp: Path, preset: str = "base") -> None:
    """One set of seeded random BASE weights, saved for the child processes.

    ``tmp/ours.pt``: our model's state dict (read back with ``weights_only=True``);
    ``tmp/hf``: the same weights as a Hugging Face ``Wav2Vec2Model`` folder, which the
    torchaudio child imports with ``import_huggingface_model``.
    """
    import torch

    from w2vtools.models.checkpoint import LoadedModel
    from w2vtools.models.huggingface import export_huggingface
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", preset)
    ours = model_class_for("wav2vec2")(cfg).eval()
    torch.save(ours.state_dict(), tmp / "ours.pt")
    export_huggingface(LoadedModel(family="wav2vec2", task="pretrain", model=ours, config=cfg), tmp / "hf",
                       architecture="Wav2Vec2Model")


#: the systems a speed run can time: (peer?, featurize keyword arguments for ours)
SYSTEMS = {
    "w2v featurize": (False, {}),
    "w2v featurize --streams 1": (False, {"streams": 1}),
    "w2v featurize --amp": (False, {"amp": True}),
    "transformers Wav2Vec2Model": (True, {}),
    "transformers Wav2Vec2Model (autocast)": (True, {}),
    "torchaudio wav2vec2": (True, {}),
}


def speed_child(args) -> None:
    """Time one system on one round's utterances in this fresh process; print JSON."""
    import torch

    from w2vtools.autocast import inference_dtype

    torch.set_num_threads(args.threads)
    tmp = Path(args.out).parent
    name = args.child_system
    lines = Path(args.scp).read_text().splitlines()
    w0 = None
    if SYSTEMS[name][0]:
        from transformers import Wav2Vec2Model as HFWav2Vec2Model

        from w2vtools.audio import load_audio

        device = torch.device(args.device)
        hf = HFWav2Vec2Model.from_pretrained(str(tmp / "hf")).eval().to(device)
        if name.startswith("transformers"):
            autocast = torch.autocast(device.type, dtype=inference_dtype(device.type), enabled="autocast" in name)

            def fn(x):
                with autocast:
                    return hf(x.to(device)).last_hidden_state[0].float().cpu()
        else:
            import torchaudio

            ta = torchaudio.models.wav2vec2.utils.import_huggingface_model(hf).eval().to(device)
            fn = lambda x: ta.extract_features(x.to(device))[0][-1][0].cpu()  # noqa: E731
        # the peers' usage: audio already in memory, one utterance per call
        waves = {u: load_audio(p, sample_rate=16000) for u, p in (line.split(" ", 1) for line in lines)}
        with torch.inference_mode():
            fn(torch.from_numpy(next(iter(waves.values()))[:32000])[None])  # warm-up, not timed
            t0 = time.perf_counter()
            outs = {u: fn(torch.from_numpy(w)[None]).numpy() for u, w in waves.items()}
            wall = time.perf_counter() - t0
        np.savez(args.out, **outs)
    else:
        from w2vtools.encoders import encoder_from_module
        from w2vtools.featurize import featurize
        from w2vtools.malloc import keep_freed_memory
        from w2vtools.models.presets import get_preset
        from w2vtools.models.registry import model_class_for

        keep_freed_memory(one_arena=True)  # what featurize does before it loads a model (see memory_child)
        model = model_class_for("wav2vec2")(get_preset("wav2vec2", args.preset)).eval()
        model.load_state_dict(torch.load(tmp / "ours.pt", weights_only=True))
        enc = encoder_from_module(model, "wav2vec2-base(random)", "wav2vec2")
        device_type = torch.device(args.device).type
        amp = bool(SYSTEMS[name][1].get("amp"))
        with torch.inference_mode(), torch.autocast(device_type, dtype=inference_dtype(device_type), enabled=amp):
            # warm-up, not timed, in the precision of the run: the peers warm up the same way
            model.to(args.device).extract_features(torch.zeros(1, 32000, device=args.device))
        t0 = time.perf_counter()
        summary = featurize(args.scp, args.out, model=enc, threads=args.threads, batch_seconds=args.batch_seconds,
                            progress=False, device=args.device, **{"streams": args.streams, **SYSTEMS[name][1]})
        wall = time.perf_counter() - t0
        assert summary.utterances == len(lines)
    print(json.dumps({"wall": wall}))


def read_features(path: Path) -> dict:
    if path.suffix == ".npz":
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    import h5py

    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


def memory_child(args) -> None:
    """Run our featurize on the first N utterances in this (fresh) process and print peak RSS."""
    import torch

    from w2vtools.encoders import encoder_from_module
    from w2vtools.featurize import featurize
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    torch.set_num_threads(args.threads)
    # `w2v featurize` tunes malloc before it loads its model; here the model is built
    # first, so do the same up front (threads that allocated before the call keep their
    # own glibc arenas, which featurize's stream threads would then share)
    from w2vtools.malloc import keep_freed_memory

    keep_freed_memory(one_arena=True)
    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", args.memory_model)
    enc = encoder_from_module(model_class_for("wav2vec2")(cfg).eval(), args.memory_model, "wav2vec2")
    lines = Path(args.scp).read_text().splitlines()[: args.child_n]
    scp = Path(args.out) / f"sub{args.child_n}.scp"
    scp.write_text("\n".join(lines) + "\n")
    # Reset the kernel's high-water mark (VmHWM) once the model is resident, so the peak
    # measured is that of featurizing (Linux: "5" > /proc/self/clear_refs).
    resident = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    featurize(str(scp), str(Path(args.out) / f"mem{args.child_n}.h5"), model=enc, threads=args.threads, progress=False)
    print(json.dumps({"n": args.child_n, "peak_rss_mb": _status_mb("VmHWM"), "after_model_mb": resident}))


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-utts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="base", choices=["base", "large", "tiny"],
                    help="the wav2vec 2.0 architecture timed (tiny: a quick check that everything runs)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where every system runs (the floor line is CPU-only)")
    ap.add_argument("--data", type=Path, default=shared_data())
    ap.add_argument("--gflops-per-audio-s", type=float, default=14.0)
    ap.add_argument("--matmul-gflops", type=float, default=None,
                    help="the machine's float32 GEMM rate for the floor line (default: measured, in its own process)")
    ap.add_argument("--batch-seconds", type=float, default=None, help="ours (default: featurize's CPU default)")
    ap.add_argument("--streams", type=int, default=None, help="ours (default: featurize's, = --threads on a CPU)")
    ap.add_argument("--compare-streams", action="store_true",
                    help="also time ours with one stream of --threads-threaded ops")
    ap.add_argument("--compare-amp", nargs="?", const="yes", default="no", choices=["yes", "no", "auto"],
                    help="also time ours with --amp and transformers under the same autocast (bfloat16 on a CPU, "
                         "float16 on CUDA); outputs differ at that precision. auto (make bench): on CUDA, and on "
                         "a CPU with native bf16 products (AMX or AVX512-BF16); elsewhere bf16 is emulated and "
                         "slower than float32, which is not worth timing")
    ap.add_argument("--memory", action="store_true", help="also measure our peak RSS at 1/4, 1/2 and all utterances")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-speed", action="store_true", help="only the memory measurement")
    ap.add_argument("--memory-model", choices=["base", "tiny"], default="base",
                    help="architecture for --memory (tiny: the pipeline's own memory on a big corpus, quickly)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (spreads machine load evenly)")
    add_common_args(ap)
    ap.add_argument("--child-n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-system", choices=sorted(SYSTEMS), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_n is not None:
        memory_child(args)
        return
    if args.child_system is not None:
        speed_child(args)
        return
    args.compare_amp = resolve_compare_amp(args.compare_amp, args.device)

    import torch

    from w2vtools.audio import load_audio

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="w2v-bench-"))
    scp = make_corpus(args.data / "ljspeech", tmp / "audio", args.num_utts)
    paths = [line.split(" ", 1)[1] for line in scp.read_text().splitlines()]
    audio_s = sum(len(load_audio(p, sample_rate=16000)) for p in paths) / 16000
    print(f"inputs: {len(paths)} utterances, {audio_s:.1f} s of audio (2-15 s each), {args.threads} threads, "
          f"torch {torch.__version__}; load average at the start %.1f %.1f %.1f" % os.getloadavg())

    if not args.skip_speed:
        speed(args, tmp, scp, audio_s)
    if args.memory:
        memory(args, tmp, scp)


def resolve_compare_amp(choice: str, device: str) -> bool:
    """``--compare-amp`` as a bool: ``auto`` is on for CUDA and for CPUs with native bf16 products."""
    if choice != "auto":
        return choice == "yes"
    if device != "cpu":
        return True
    from w2vtools.models.layers import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        print("--compare-amp auto: not timing --amp: this CPU has no native bf16 products (AMX or AVX512-BF16)")
        return False
    return True


def speed(args, tmp: Path, scp: Path, audio_s: float) -> None:
    """Ours vs the peers, interleaved rounds of fresh processes, with a numerical agreement check."""
    build_models(tmp, args.preset)
    names = ["w2v featurize"]
    if args.compare_streams:
        names.append("w2v featurize --streams 1")
    if args.compare_amp:
        names.append("w2v featurize --amp")
    if not args.skip_peers:
        names += ["transformers Wav2Vec2Model", "torchaudio wav2vec2"]
        names += ["transformers Wav2Vec2Model (autocast)"] if args.compare_amp else []
    results = dict.fromkeys(names, 0.0)
    feats: dict[str, dict] = {n: {} for n in names}
    # Interleave: the corpus is cut into rounds and every system runs each round in turn,
    # so load from other processes on a shared machine falls on all of them alike.
    lines = scp.read_text().splitlines()
    rounds = max(1, min(args.rounds, len(lines)))
    for r in range(rounds):
        sub = tmp / f"round{r}.scp"
        sub.write_text("".join(lines[i] + "\n" for i in range(r, len(lines), rounds)))
        for k, name in enumerate(names):
            out = tmp / f"sys{k}-round{r}{'.npz' if SYSTEMS[name][0] else '.h5'}"
            cmd = [sys.executable, __file__, "--child-system", name, "--scp", str(sub), "--out", str(out),
                   "--threads", str(args.threads), "--device", args.device, "--preset", args.preset]
            cmd += ["--batch-seconds", str(args.batch_seconds)] if args.batch_seconds else []
            cmd += ["--streams", str(args.streams)] if args.streams else []
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
            results[name] += json.loads(p.stdout.strip().splitlines()[-1])["wall"]
            feats[name].update(read_features(out))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v:.1f} s" for k, v in results.items())
              + " (load average %.1f %.1f %.1f)" % os.getloadavg(), flush=True)

    ours_feats = feats["w2v featurize"]
    for name in names[1:]:
        if SYSTEMS[name][0]:
            diff = max(float(np.abs(ours_feats[u] - x).max()) for u, x in feats[name].items())
            print(f"same weights check: max |ours - {name}| = {diff:.2e}")

    ours = audio_s / results["w2v featurize"]
    print(f"\n{'system':32s} {'wall s':>8s} {'audio-s/s':>10s} {'s per audio-s':>14s}")
    for name, t in results.items():
        print(f"{name:32s} {t:8.1f} {audio_s / t:10.2f} {t / audio_s:14.4f}")
    for name, t in results.items():
        if name != "w2v featurize":
            print(f"ratio ours / {name}: {ours / (audio_s / t):.2f}x")
    if args.compare_amp:
        amp_t = results["w2v featurize --amp"]
        for name, t in results.items():
            if not name.startswith("w2v"):
                print(f"ratio ours --amp / {name}: {t / amp_t:.2f}x")
        amp = feats["w2v featurize --amp"]
        rel = [float(np.linalg.norm(amp[k] - x) / np.linalg.norm(x)) for k, x in ours_feats.items()]
        print(f"--amp vs float32 features: relative error {np.median(rel):.2e} median, {max(rel):.2e} max")
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    rate, floor_fraction = args.matmul_gflops, {}
    if args.device == "cpu" and args.preset == "base":  # the floor's GFLOP per audio-s are BASE's
        if rate is None:  # the best of the Transformer's GEMM shapes, same threads, in its own process
            p = subprocess.run([sys.executable, "-c", "import sys, argparse, json; sys.path.insert(0, sys.argv[1]); "
                                "from bench_pretrain_step import worker_gemm; "
                                "print(json.dumps(worker_gemm(argparse.Namespace(threads=int(sys.argv[2])), dtypes=('float32',))))",
                                str(Path(__file__).parent), str(args.threads)], capture_output=True, text=True, check=True)
            rate = json.loads(p.stdout.strip().splitlines()[-1])["float32"]
        floor = args.gflops_per_audio_s / rate
        per = results["w2v featurize"] / audio_s
        floor_fraction = {"w2v featurize": floor / per}
        print(f"FLOP floor: {floor:.3f} s per audio-s ({args.gflops_per_audio_s} GFLOP at {rate:.0f} GFLOP/s float32 GEMM); "
              f"ours {per:.3f} s per audio-s = {floor / per:.0%} of the floor's speed")
    ratios = [("w2v featurize", n) for n in results if not n.startswith("w2v") and not n.endswith("(autocast)")]
    if args.compare_amp:  # --amp against our float32 and against the peer under the same autocast
        ratios += [("w2v featurize --amp", "w2v featurize")]
        ratios += [("w2v featurize --amp", n) for n in results if n.endswith("(autocast)")]
    Result("featurize", "audio-s/s", {n: audio_s / t for n, t in results.items()}, ratios=ratios,
           floor=floor_fraction,
           drivers={"gemm_gflops_fp32": rate, "threads": args.threads, "audio_s": audio_s, "device": args.device,
                    "page_faults_per_audio_s": page_faults() / audio_s / len(results)},
           notes=["whole process per round: model load, audio decode, HDF5 write included for ours"]
           ).write(args.json, args.threads)


def memory(args, tmp: Path, scp: Path) -> None:
    """Peak RSS of featurize for growing corpora, each in a fresh process."""
    print(f"\npeak RSS of `featurize` with the {args.memory_model} model (fresh process each):")
    n_all = len(scp.read_text().splitlines())
    for n in sorted({max(1, n_all // 4), max(1, n_all // 2), n_all}):
        p = subprocess.run(
            [sys.executable, __file__, "--child-n", str(n), "--scp", str(scp), "--out", str(tmp),
             "--threads", str(args.threads), "--memory-model", args.memory_model],
            capture_output=True, text=True, check=True,
        )
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"  {n:5d} utterances: peak RSS while featurizing {r['peak_rss_mb']:.0f} MB "
              f"(RSS with the model loaded, before: {r['after_model_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
