#!/usr/bin/env python3
"""Where ``w2v featurize`` spends its time against the FLOP floor: phases, then the model's ops.

``bench_featurize.py`` reports featurize's speed as a fraction of the floor (the model's FLOPs at
the machine's best float32 GEMM rate). This script says where the rest goes, on the same kind of
corpus (LJ Speech clips concatenated into 2-15 s utterances at 16 kHz) and the same seeded random
BASE weights, in one process and **one thread**, so that every phase is CPU time of one core:

1. the phases of a featurize call, each timed alone: audio decoding (``load_audio``), the model's
   forward pass (each utterance alone, as a CPU stream runs it), and the HDF5 writer;
2. the model's FLOPs, counted by ``torch.utils.flop_counter`` on these utterances (GEMMs and
   convolutions), and the floor they give at the 1-thread GEMM rate measured here;
3. torch.profiler's table of the forward pass, grouped into GEMMs, the feature encoder's
   convolutions, the positional convolution, and the rest (norms, GELU, softmax, copies).

Then the whole ``featurize()`` call with its 2 streams on 2 threads, to compare with the phases' sum.

Run:  python benchmarks/profile_featurize.py [--num-utts 12] [--preset base]
This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_featurize  # noqa: E402
from bench_pretrain_step import worker_gemm  # noqa: E402
from common import shared_data  # noqa: E402


def op_group(name: str, shapes) -> str:
    """The row of the grouped table an op's own time counts in."""
    if name in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm",
                "aten::_scaled_dot_product_flash_attention_for_cpu"):
        return "GEMMs and attention (mm, addmm(_), bmm, SDPA)"
    if name in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::conv1d"):
        # the positional convolution is the only one on the Transformer's 768 channels
        channels = shapes[0][1] if shapes and len(shapes[0]) >= 3 else None  # conv1d runs as (B, C, 1, T)
        return "positional convolution (grouped, kernel 128)" if channels == 768 else "feature encoder convolutions"
    if name in ("aten::native_layer_norm", "aten::native_group_norm", "aten::layer_norm", "aten::group_norm"):
        return "layer and group norms"
    if name in ("aten::gelu",):
        return "GELU"
    if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy"):
        return "copies (layout, dtype)"
    return "other elementwise and bookkeeping"


def _gemm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _cpu_attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, queries, dim = q_shape
    return 4 * batch * heads * queries * k_shape[2] * dim  # Q K^T and P V


def uncounted_flops() -> dict:
    """FLOP formulas for the ops torch 2.14's ``FlopCounterMode`` counts as 0: the in-place
    ``addmm_`` that the time-major convolutions accumulate their taps with, and SDPA's CPU
    kernel (``custom_mapping``; the share they are of a forward: BENCHMARKS.md, "Floor goals")."""
    import torch

    return {torch.ops.aten.addmm_: _gemm_flops,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-utts", type=int, default=12)
    ap.add_argument("--preset", default="base", choices=["base", "tiny"])
    ap.add_argument("--lj-dir", default=str(shared_data() / "ljspeech"))
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from w2vtools.audio import load_audio
    from w2vtools.encoders import encoder_from_module
    from w2vtools.featurize import featurize
    from w2vtools.formats.features import HDF5Writer
    from w2vtools.malloc import keep_freed_memory
    from w2vtools.models.presets import get_preset
    from w2vtools.models.registry import model_class_for

    keep_freed_memory(one_arena=True)  # as featurize does
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="w2v-profile-featurize-"))
    scp = bench_featurize.make_corpus(Path(args.lj_dir), tmp / "wavs", args.num_utts)
    paths = [line.split(" ", 1)[1] for line in scp.read_text().splitlines()]
    torch.manual_seed(0)
    model = model_class_for("wav2vec2")(get_preset("wav2vec2", args.preset)).eval()

    t0 = time.process_time()
    waves = [load_audio(p, sample_rate=16000) for p in paths]
    decode_s = time.process_time() - t0
    audio_s = sum(len(w) for w in waves) / 16000

    def forward(w):
        return model.extract_features(torch.from_numpy(w)[None]).features[0]

    with torch.inference_mode():
        forward(waves[0][:32000])  # warm-up
        t0 = time.process_time()
        outs = [forward(w).numpy() for w in waves]
        forward_s = time.process_time() - t0
        with FlopCounterMode(display=False, custom_mapping=uncounted_flops()) as counter:
            for w in waves:
                forward(w)
        flops = counter.get_total_flops()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for w in waves:
                forward(w)

    t0 = time.process_time()
    with HDF5Writer(tmp / "feats.h5") as writer:
        for i, x in enumerate(outs):
            writer.write(f"utt{i:04d}", x)
    write_s = time.process_time() - t0

    rate = worker_gemm(argparse.Namespace(threads=1), dtypes=("float32",))["float32"]
    floor_s = flops / 1e9 / rate
    print(f"{args.num_utts} utterances, {audio_s:.1f} s of audio, preset {args.preset}, 1 thread, "
          f"CPU: {os.cpu_count()} cores; float32 GEMM {rate:.0f} GFLOP/s on one core")
    print(f"model FLOPs (GEMMs, convolutions and attention, counted): {flops / 1e9 / audio_s:.2f} GFLOP per audio-s")
    print(f"\n{'phase (CPU s per audio-s, 1 thread)':44s} {'s':>8s} {'share':>7s}")
    total = decode_s + forward_s + write_s
    for name, s in (("audio decoding (load_audio)", decode_s), ("model forward", forward_s),
                    ("HDF5 writing", write_s), ("sum", total)):
        print(f"{name:44s} {s / audio_s:8.4f} {s / total:7.1%}")
    print(f"{'floor: FLOPs at the GEMM rate':44s} {floor_s / audio_s:8.4f}")
    print(f"forward alone at {floor_s / forward_s:.0%} of the floor; the three phases at {floor_s / total:.0%}")

    events = prof.key_averages(group_by_input_shape=True)
    own = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        g = op_group(e.key, e.input_shapes)
        groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total
    print(f"\n{'forward pass, ops grouped':46s} {'share of own CPU time':>22s}")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{g:46s} {t / own:22.1%}")

    # the whole call with featurize's defaults on 2 threads (2 streams of one thread each)
    t0 = time.perf_counter()
    featurize(str(scp), str(tmp / "whole.h5"), model=encoder_from_module(model, "random", "wav2vec2"), threads=2,
              progress=False)
    whole = time.perf_counter() - t0
    print(f"\nwhole featurize() call, 2 streams x 1 thread: {whole / audio_s:.4f} s per audio-s of wall "
          f"= {2 * whole / audio_s:.4f} core-s per audio-s; the 1-thread phases sum to {total / audio_s:.4f}")

if __name__ == "__main__":
    main()
