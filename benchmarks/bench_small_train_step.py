#!/usr/bin/env python3
"""The digits recipe's two training steps, ours against the same model built from torch's parts.

The digits recipe spends most of its time in two kinds of CTC training step on one CPU core
each (stage 4 and 6): the BiLSTM on stored features (``w2v finetune --features --arch blstm
--preset tiny``) and the tiny wav2vec 2.0 fine-tuned on audio (``w2v finetune --preset tiny``).
Both steps are timed on padded batches shaped like the recipe's (FSDD utterances of 0.25-0.8 s;
2000 fbank frames, or 48000 samples at 16 kHz, per batch, as ``recipes/digits/conf``), forward,
CTC loss and backward, no optimizer. Systems:

* ``blstm``: ours (:class:`w2vtools.models.downstream.DownstreamModel`: each LSTM direction as
  its own one-direction LSTM over utterances reversed within their length, which takes oneDNN's
  whole-sequence kernel) against ``torch-packed``, the same model and weights through
  ``nn.LSTM`` on a packed sequence (``pack_padded_sequence``, how PyTorch recipes usually
  keep padding out of a BiLSTM; on a CPU ATen then steps through time);
* ``wav2vec2``: ours (:class:`w2vtools.models.ctc.CTCModel` over the ``tiny`` preset, masking
  off, statistics of the first block's group norm over valid frames only) against
  ``torchaudio``'s ``wav2vec2_model`` with the same sizes and a CTC head (its group norm runs
  over the padding too).

Dropout is off in both, so the same work is timed. Each system runs ``--warmup`` steps, then
the best of ``--repeat`` timings of ``--steps`` steps counts; systems alternate, ``--rounds``
times, and the median over rounds is reported.

Run:  python benchmarks/bench_small_train_step.py [--threads 1] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Result, add_common_args  # noqa: E402

sys.path.insert(0, str(REPO))


def lengths_filling(budget: int, low: int, high: int, seed: int = 0) -> list[int]:
    """Utterance lengths drawn in [low, high] until the next would pass ``budget`` padded units."""
    import random

    rng = random.Random(seed)
    lengths: list[int] = []
    while True:
        n = rng.randint(low, high)
        if (len(lengths) + 1) * max(lengths + [n]) > budget:
            return lengths
        lengths.append(n)


def blstm_systems():
    """(name -> step function) for the BiLSTM on 80-dim fbank frames, ours and nn.LSTM packed."""
    import torch

    from w2vtools.models.downstream import DownstreamModel
    from w2vtools.models.presets import downstream_config

    torch.manual_seed(0)
    model = DownstreamModel(downstream_config("blstm", "tiny", input_dim=80, vocab_size=32, dropout=0.0)).train()
    lengths = torch.tensor(lengths_filling(2000, 25, 80))
    batch, total = len(lengths), int(lengths.max())
    source = torch.randn(batch, total, 80)
    mask = torch.arange(total)[None, :] >= lengths[:, None]
    targets = torch.randint(4, 32, (batch, 5))

    def packed(x, padding_mask):
        packed_x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = model.lstm(packed_x)
        return torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=total)[0]

    def step(blstm):
        def run():
            model._blstm = blstm  # the instance attribute shadows the method for this system
            logits, _ = model(source, mask)
            lp = logits.log_softmax(-1).transpose(0, 1)
            loss = torch.nn.functional.ctc_loss(lp, targets, lengths, torch.full((batch,), 5), reduction="sum")
            loss.backward()
        return run

    ours = DownstreamModel._blstm.__get__(model)
    return {"ours": step(ours), "torch-packed": step(packed)}, {"utterances": batch, "frames": total}


def wav2vec2_systems():
    """(name -> step function) for the tiny wav2vec 2.0 CTC step, ours and torchaudio's model."""
    import torch
    import torchaudio

    from w2vtools.models.ctc import CTCConfig, CTCModel
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    cfg = get_preset("wav2vec2", "tiny")
    ours = CTCModel(Wav2Vec2Model(cfg), 32, CTCConfig(vocab_size=32, apply_mask=False, feature_grad_mult=1.0,
                                                      layerdrop=0.0, activation_dropout=0.0)).train()
    peer = torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[tuple(c) for c in cfg.conv_feature_layers],
        extractor_conv_bias=False, encoder_embed_dim=cfg.encoder_embed_dim, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=cfg.conv_pos, encoder_pos_conv_groups=cfg.conv_pos_groups,
        encoder_num_layers=cfg.encoder_layers, encoder_num_heads=cfg.encoder_attention_heads,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=cfg.encoder_ffn_embed_dim,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=cfg.layer_norm_first,
        encoder_layer_drop=0.0, aux_num_out=32).train()
    lengths = torch.tensor(lengths_filling(48000, 4000, 12800))
    batch, total = len(lengths), int(lengths.max())
    audio = torch.randn(batch, total)
    mask = torch.arange(total)[None, :] >= lengths[:, None]
    targets = torch.randint(4, 32, (batch, 5))

    def ctc(logits, frames):
        lp = logits.log_softmax(-1).transpose(0, 1)
        loss = torch.nn.functional.ctc_loss(lp, targets, frames, torch.full((batch,), 5), reduction="sum")
        loss.backward()

    def run_ours():
        logits, frame_mask = ours(audio, mask)
        ctc(logits, (~frame_mask).sum(1) if frame_mask is not None else torch.full((batch,), logits.shape[1]))

    def run_peer():
        logits, frames = peer(audio, lengths)
        ctc(logits, frames)

    return {"ours": run_ours, "torchaudio": run_peer}, {"utterances": batch, "samples": total}


def time_step(run, warmup: int, steps: int, repeat: int) -> float:
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recipe: 1 per job)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="every system this many times, in turn")
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rates: dict[str, float] = {}
    ratios = []
    drivers: dict = {"threads": args.threads}
    for model, build in (("blstm", blstm_systems), ("wav2vec2", wav2vec2_systems)):
        systems, shape = build()
        drivers[model] = shape
        times: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, run in systems.items():
                times[name].append(time_step(run, args.warmup, args.steps, args.repeat))
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        print(f"{model}: batch {shape}, {args.threads} threads, median of {args.rounds} rounds "
              f"(best of {args.repeat} x {args.steps} steps)")
        for name, v in ms.items():
            print(f"  {name:13s} {v:8.1f} ms/step")
            rates[f"{model} {name}"] = 1000 / v
        for name in ms:
            if name != "ours":
                print(f"  ours vs {name}: {ms[name] / ms['ours']:.2f}x")
                ratios.append((f"{model} ours", f"{model} {name}"))
    Result("small train step", "steps/s", rates, ratios=ratios, drivers=drivers).write(args.json, args.threads)


if __name__ == "__main__":
    main()
