#!/usr/bin/env python3
"""Which confidence picks better pseudo-labels: the n-best posterior of the 1-best, or word confidences.

The librispeech recipe's self-training (stage 7, ``recipes/librispeech/local/select_pseudo.py``)
keeps the most confident half of the unlabeled utterances' hypotheses. This measures, for each
confidence ``w2v decode`` writes, how well it ranks utterances by their real word error rate:

* ``nbest``: the n-best posterior of the 1-best (``.scores`` third column: the softmax of the
  total scores among the decoder's 10 best);
* ``word``: the mean over the 1-best's words of the word confidence in the CTM (the mean
  posterior of the word's letters at the frames the beam search emits them);
* ``viterbi word``: the same word confidence from greedy decoding (no LM), for reference.

Why not on the recipe's test fixture: its seed model is a tiny model fine-tuned for a few
updates, whose pseudo-labels of the FSDD digits are nearly all wrong, so any ranking of them
is a ranking of noise. Here instead the emissions are real wav2vec 2.0 frames spliced into the
32 LJ Speech sentences as ``benchmarks/bench_decode.py`` builds them (its ``frame_banks`` and
``splice``), each sentence ``--variants`` times with a different difficulty: letter
substitution probability uniform in [0, ``--max-sub``], deletion a third of it, Gaussian
noise on every logit uniform in [0.5, ``--max-noise``]. Decoding: KenLM 4-gram + lexicon from
the LJ LM text (``w2v lm``), the decoder's defaults.

Reported per confidence: Spearman's rank correlation with the utterance WER (more negative is
better), and the WER of the kept ``--keep`` fraction chosen by it, next to keeping all and to
the oracle (the lowest-WER utterances).

Run:  python benchmarks/bench_confidence.py [--variants 4] [--keep 0.5] [--json out.json]
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
sys.path.insert(0, str(REPO))

from bench_decode import UID, frame_banks, splice  # noqa: E402
from common import add_common_args, Result, shared_data  # noqa: E402


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average the ranks of ties
            same = v == value
            r[same] = r[same].mean()
        return r
    return float(np.corrcoef(ranks(np.asarray(x, float)), ranks(np.asarray(y, float)))[0, 1])


def kept_wer(conf: dict, errors: dict, words: dict, keep: float) -> float:
    uids = sorted(conf, key=lambda u: -conf[u])[: max(1, round(len(conf) * keep))]
    return 100.0 * sum(errors[u] for u in uids) / sum(words[u] for u in uids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(shared_data()))
    ap.add_argument("--variants", type=int, default=4, help="spliced emissions per LJ sentence")
    ap.add_argument("--max-sub", type=float, default=0.3)
    ap.add_argument("--max-noise", type=float, default=2.5)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from w2vtools.decode import BeamSearch, DecoderOptions, viterbi
    from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
    from w2vtools.lm import alphabet_of, build_lm, normalize_line
    from w2vtools.score import score_tables

    data = Path(args.data)
    tokens = ctc_vocabulary(read_dictionary(data / "emissions" / "dict.ltr.txt"))
    rng = np.random.default_rng(args.seed)
    banks, blanks, lead = frame_banks(np.load(data / "emissions" / f"{UID}.logits.npy"), tokens, rng)
    refs, log_probs = {}, {}
    for line in (data / "ljspeech" / "metadata.csv").read_text(encoding="utf-8").splitlines():
        uid, _, norm = line.split("|")
        sentence = normalize_line(norm, alphabet_of(tokens))
        for v in range(args.variants):
            p_sub = rng.uniform(0, args.max_sub)
            x = splice(sentence, banks, blanks, lead, rng, p_sub, p_sub / 3, rng.uniform(0.5, args.max_noise))
            refs[f"{uid}-v{v}"] = sentence.split()
            log_probs[f"{uid}-v{v}"] = torch.log_softmax(torch.from_numpy(x), -1)
    print(f"{len(refs)} utterances, {sum(len(r) for r in refs.values())} words")

    with tempfile.TemporaryDirectory() as tmp:
        lm, lexicon = f"{tmp}/lm.bin", f"{tmp}/lexicon.txt"
        build_lm(str(data / "ljspeech" / "lm_text.txt"), lm, order=4,
                 dict_path=str(data / "emissions" / "dict.ltr.txt"), lexicon=lexicon)
        search = BeamSearch(tokens, DecoderOptions("kenlm", lexicon=lexicon, lm=lm))
        t0 = time.perf_counter()
        hyps, greedy = {}, {}
        for k, lp in log_probs.items():
            hyps[k] = search(lp)[0]
            greedy[k] = viterbi(lp, tokens)
        print(f"decoded in {time.perf_counter() - t0:.1f} s")

    def errors_of(table):
        out = {}
        for k in refs:
            out[k] = score_tables({k: refs[k]}, {k: table[k].words}).errors
        return out

    errors, words = errors_of(hyps), {k: len(r) for k, r in refs.items()}
    wer = {k: errors[k] / words[k] for k in refs}
    confidences = {
        "nbest": {k: h.posterior for k, h in hyps.items()},
        "word": {k: float(np.mean(h.word_confidences)) if h.word_confidences else 0.0 for k, h in hyps.items()},
        "viterbi word": {k: float(np.mean(h.word_confidences)) if h.word_confidences else 0.0
                         for k, h in greedy.items()},
    }
    total = 100.0 * sum(errors.values()) / sum(words.values())
    oracle = kept_wer({k: -wer[k] for k in refs}, errors, words, args.keep)
    print(f"kenlm WER all {total:.2f}%; oracle {args.keep:.0%} kept {oracle:.2f}%")
    systems, notes = {}, []
    for name, conf in confidences.items():
        rho = spearman(np.array([conf[k] for k in refs]), np.array([wer[k] for k in refs]))
        kept = kept_wer(conf, errors, words, args.keep)
        print(f"  {name:13s} Spearman(conf, WER) {rho:+.3f}; WER of the kept {args.keep:.0%}: {kept:.2f}%")
        systems[f"{name} kept WER reduction"] = total - kept
        notes.append(f"{name}: spearman {rho:+.3f}, kept WER {kept:.2f}%")
    notes.append(f"all {total:.2f}%, oracle {oracle:.2f}%")
    Result("confidence", "WER points removed by keeping the confident half", systems,
           drivers={"utterances": len(refs), "keep": args.keep}, notes=notes).write(args.json, threads=1)


if __name__ == "__main__":
    main()
