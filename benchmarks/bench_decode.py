#!/usr/bin/env python3
"""Decoding speed and WER: ``w2v decode`` vs pyctcdecode and torchaudio's ``ctc_decoder``.

Emissions (what was used, honestly): the only real wav2vec 2.0 output available here
is one LibriSpeech test-clean utterance (../shared/data/emissions, 422 frames, BASE
960h). No fine-tuned CTC model exists in this project yet, so the test set is built
from that real output:

* the real utterance itself (its transcript has PICNIC, which the LM text lacks);
* the 32 LJ Speech sentences of ``ljspeech/metadata.csv`` (LJ001; none of them is in
  the LM text), each ``--variants`` times, as *spliced* emissions: for every letter
  of the sentence a real frame run of that letter (with its trailing blank frames) is
  cut from the real utterance's Viterbi alignment; letters the utterance never emits
  (F, J, K, Q, X, Z ...) reuse another letter's frames with the two classes' columns
  swapped. Recognition errors are injected as real-looking confusions: with
  probability ``--p-sub`` a letter gets another letter's frames, with ``--p-del`` it
  is dropped, and Gaussian noise (``--noise``) is added to every logit.

LM and lexicon: a 4-gram built by :func:`w2vtools.lm.build_lm` (``w2v lm``) from
``ljspeech/lm_text.txt`` and the lexicon of its spellable words (open vocabulary:
test words missing from the LM text cannot be recognized by lexicon decoders).

Systems, each with its documented default settings, the same log-probabilities, the
same LM and the same vocabulary, one utterance per call in this process:

* ``viterbi``: :func:`w2vtools.decode.viterbi`;
* ``w2v kenlm``: :class:`w2vtools.decode.BeamSearch` with w2v's defaults (beam 50,
  beam threshold 12, blank skip 0.999, LM weight 2, word score -1); ``w2v wide``
  is the same with threshold 25 and every frame searched, for reference;
* ``torchaudio``: ``ctc_decoder(lexicon, tokens, lm)`` with its defaults (beam 50,
  threshold 50, LM weight 2, word score 0);
* ``pyctcdecode``: ``build_ctcdecoder(labels, lm, unigrams=lexicon words)`` with its
  defaults (alpha 0.5, beta 1.5, beam width 100); it gets the same log-probabilities
  without the three never-emitted classes <pad>, </s>, <unk> (renormalized).

Timing covers the search only (decoders and LM are built before the clock starts),
best of ``--repeat`` passes run in turn (system A, B, C, A, B, C ...);
WER is :func:`w2vtools.score.score_tables` against the sentences.

Run:  python benchmarks/bench_decode.py [--variants 3] [--threads 1] [--repeat 3] [--thresholds 10,12]
Needs KenLM's lmplz (tools/install_kenlm.sh). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_common_args, Result, shared_data  # noqa: E402
sys.path.insert(0, str(REPO))

UID = "librispeech-121-121726-0000"


def frame_banks(logits: np.ndarray, tokens: list[str], rng: np.random.Generator):
    """{token: [frames of one real emission of it + its trailing blanks]} from the Viterbi path."""
    ids = logits.argmax(-1)
    runs = []  # (token id, first, last)
    start = 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or ids[t] != ids[start]:
            runs.append((int(ids[start]), start, t - 1))
            start = t
    banks: dict[str, list[np.ndarray]] = {}
    blanks = [logits[s : e + 1] for tok, s, e in runs if tok == 0]
    for i, (tok, s, e) in enumerate(runs):
        if tok == 0:
            continue
        end = e
        if i + 1 < len(runs) and runs[i + 1][0] == 0:
            end = min(runs[i + 1][2], e + 6)
        banks.setdefault(tokens[tok], []).append(logits[s : end + 1])
    lead = logits[: runs[0][2] + 1] if runs[0][0] == 0 else logits[:0]
    letters = [t for t in tokens[4:] if t != "|"]
    present = [t for t in letters if t in banks]
    for t in letters:
        if t not in banks:  # a real frame run of another letter, with the two classes' columns swapped
            donor = present[int(rng.integers(len(present)))]
            a, b = tokens.index(donor), tokens.index(t)
            segs = []
            for seg in banks[donor]:
                seg = seg.copy()
                seg[:, [a, b]] = seg[:, [b, a]]
                segs.append(seg)
            banks[t] = segs
    return banks, blanks, lead


def splice(sentence: str, banks, blanks, lead, rng, p_sub: float, p_del: float, noise: float) -> np.ndarray:
    letters = [t for t in banks if t != "|"]
    chars = list("|".join(sentence.split()))
    parts = [lead]
    prev = None
    for c in chars:
        if c != "|" and rng.random() < p_del:
            continue
        tok = c
        if c != "|" and rng.random() < p_sub:
            tok = letters[int(rng.integers(len(letters)))]
        segs = banks[tok]
        seg = segs[int(rng.integers(len(segs)))]
        if prev == tok and seg.shape[0] > 0 and seg[-1].argmax() != 0:
            parts.append(blanks[int(rng.integers(len(blanks)))][:1])
        parts.append(seg)
        prev = tok
    parts.append(blanks[int(rng.integers(len(blanks)))])
    x = np.concatenate(parts).astype(np.float32)
    return x + rng.normal(0, noise, x.shape).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(shared_data()))
    ap.add_argument("--variants", type=int, default=3, help="spliced emissions per LJ sentence")
    ap.add_argument("--p-sub", type=float, default=0.08)
    ap.add_argument("--p-del", type=float, default=0.03)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per system, interleaved; best is kept")
    ap.add_argument("--thresholds", default="", help="also time w2v kenlm at these beam thresholds (e.g. 10,12,20)")
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pyctcdecode import build_ctcdecoder
    from torchaudio.models.decoder import ctc_decoder

    from w2vtools.decode import BeamSearch, DecoderOptions, read_lexicon, viterbi
    from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
    from w2vtools.lm import alphabet_of, build_lm, normalize_line
    from w2vtools.score import score_tables

    data = Path(args.data)
    tokens = ctc_vocabulary(read_dictionary(data / "emissions" / "dict.ltr.txt"))
    alphabet = alphabet_of(tokens)
    real = np.load(data / "emissions" / f"{UID}.logits.npy")
    rng = np.random.default_rng(args.seed)
    banks, blanks, lead = frame_banks(real, tokens, rng)

    refs: dict[str, list[str]] = {UID: (data / "emissions" / f"{UID}.expected.txt").read_text().split()}
    emissions: dict[str, np.ndarray] = {UID: real}
    for line in (data / "ljspeech" / "metadata.csv").read_text(encoding="utf-8").splitlines():
        uid, _, norm = line.split("|")
        sentence = normalize_line(norm, alphabet)
        for v in range(args.variants):
            key = f"{uid}-v{v}"
            refs[key] = sentence.split()
            emissions[key] = splice(sentence, banks, blanks, lead, rng, args.p_sub, args.p_del, args.noise)
    log_probs = {k: torch.log_softmax(torch.from_numpy(x), -1) for k, x in emissions.items()}
    frames = sum(x.shape[0] for x in emissions.values())
    print(f"test set: {len(refs)} utterances ({frames} frames = {frames * 0.02:.0f} s at 20 ms), "
          f"{sum(len(r) for r in refs.values())} words; 1 real, {len(refs) - 1} spliced from real frames")

    with tempfile.TemporaryDirectory() as tmp:
        lm, lexicon = f"{tmp}/lm.bin", f"{tmp}/lexicon.txt"
        t = time.perf_counter()
        build_lm(str(data / "ljspeech" / "lm_text.txt"), lm, order=4, dict_path=str(data / "emissions" / "dict.ltr.txt"),
                 lexicon=lexicon)
        print(f"4-gram + lexicon built by w2v lm in {time.perf_counter() - t:.1f} s")
        words = list(read_lexicon(lexicon))
        oov = sum(1 for r in refs.values() for w in r if w not in set(words))
        print(f"lexicon {len(words)} words; test OOV words {oov}")

        ours = BeamSearch(tokens, DecoderOptions("kenlm", lexicon=lexicon, lm=lm))
        wide = BeamSearch(tokens, DecoderOptions("kenlm", lexicon=lexicon, lm=lm, beam_threshold=25, blank_skip=1.0))
        ta = ctc_decoder(lexicon=lexicon, tokens=tokens, lm=lm, blank_token="<s>", sil_token="|", unk_word="<unk>")
        keep = [i for i, t in enumerate(tokens) if t not in ("<pad>", "</s>", "<unk>")]
        labels = ["" if tokens[i] == "<s>" else " " if tokens[i] == "|" else tokens[i] for i in keep]
        pyctc = build_ctcdecoder(labels, kenlm_model_path=lm, unigrams=words)
        pyctc_in = {k: torch.log_softmax(x[:, keep], -1).numpy() for k, x in log_probs.items()}

        def run_viterbi(k):
            return viterbi(log_probs[k], tokens).words

        def run_ours(k):
            return ours(log_probs[k])[0].words

        def run_wide(k):
            return wide(log_probs[k])[0].words

        def run_torchaudio(k):
            hyp = ta(log_probs[k].unsqueeze(0))[0][0]
            return list(hyp.words)

        def run_pyctc(k):
            return pyctc.decode(pyctc_in[k]).split()

        systems = [("viterbi", run_viterbi), ("w2v kenlm", run_ours), ("w2v wide", run_wide),
                   ("torchaudio", run_torchaudio), ("pyctcdecode", run_pyctc)]
        for thr in [float(x) for x in args.thresholds.split(",") if x]:
            extra = BeamSearch(tokens, DecoderOptions("kenlm", lexicon=lexicon, lm=lm, beam_threshold=thr))
            systems.append((f"w2v thr {thr:g}", lambda k, d=extra: d(log_probs[k])[0].words))
        for _, fn in systems:  # warm-up (first LM access, allocations)
            fn(UID)
        # Passes are interleaved (system A, B, C, A, B, C, ...) and the best pass of each is
        # kept, so a change in machine load does not favour whichever system ran last.
        best = {name: float("inf") for name, _ in systems}
        hyps_of = {}
        for _ in range(args.repeat):
            for name, fn in systems:
                t = time.perf_counter()
                hyps_of[name] = {k: fn(k) for k in refs}
                best[name] = min(best[name], time.perf_counter() - t)
        results = {}
        for name, _ in systems:
            elapsed = best[name]
            r = score_tables(refs, hyps_of[name])
            results[name] = (len(refs) / elapsed, r)
            print(f"{name:12s} {len(refs) / elapsed:8.1f} utt/s  RTF {elapsed / (frames * 0.02):.4f}  "
                  + r.format().splitlines()[0])
        ups_ours, r_ours = results["w2v kenlm"]
        ups_py, r_py = results["pyctcdecode"]
        ups_ta, r_ta = results["torchaudio"]
        print(f"\nw2v kenlm vs pyctcdecode: {ups_ours / ups_py:.2f}x speed, WER {r_ours.error_rate:.2f} vs {r_py.error_rate:.2f}")
        print(f"w2v kenlm vs torchaudio:  {ups_ours / ups_ta:.2f}x speed, WER {r_ours.error_rate:.2f} vs {r_ta.error_rate:.2f}")
        print(f"real utterance: w2v kenlm -> {' '.join(run_ours(UID))}")
        Result("decode", "utt/s", {name: ups for name, (ups, _) in results.items()},
               ratios=[("w2v kenlm", "pyctcdecode"), ("w2v kenlm", "torchaudio")],
               drivers={"utterances": len(refs), "frames": frames, "threads": args.threads},
               notes=[f"WER {name} {r.error_rate:.2f}" for name, (_, r) in results.items()]).write(args.json, args.threads)


if __name__ == "__main__":
    main()
