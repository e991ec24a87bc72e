"""``w2v quantize``: discrete units from a model's quantizer or from k-means on stored features."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", required=False, metavar="MANIFEST|FEATS")
@click.argument("out", required=False)
@click.option("--model", "-m", default=None,
              help="vq-wav2vec or wav2vec 2.0 checkpoint (or named model): write its quantizer's codes for MANIFEST.")
@click.option("--index", is_flag=True,
              help="One integer per frame (g0*V + g1 for two groups of V) instead of 'g0-g1'.")
@click.option("--dedup", is_flag=True, help="Collapse runs of the same unit.")
@click.option("--kmeans", type=int, default=None, metavar="K", help="Learn K k-means units on --fit features.")
@click.option("--fit", "fit", default=None, metavar="FEATS",
              help="Features to learn k-means on (feats.h5, scp:feats.scp, ark:f.ark).")
@click.option("--codebook", default=None, metavar="FILE.npy",
              help="k-means codebook: written by --kmeans/--fit, read to assign units to FEATS.")
@click.option("--max-frames", type=int, default=200_000, show_default=True, help="Frames sampled for k-means.")
@click.option("--iterations", type=int, default=100, show_default=True, help="At most this many k-means steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-seconds", type=float, default=200.0, show_default=True, help="Padded audio seconds per batch.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's default).")
def command(source, out, model, index, dedup, kmeans, fit, codebook, max_frames, iterations, seed, device,
            batch_seconds, threads):
    """Write discrete units, one utterance a line: `uid tok tok ...` (OUT, or - for stdout).

    With --model: codes of a vq-wav2vec (Gumbel or k-means) or wav2vec 2.0
    quantizer for the audio of MANIFEST (TSV, Kaldi data dir, wav.scp or -), as
    fairseq's vq-wav2vec_featurize.py writes them ('g0-g1'), or integers (--index).

    With --kmeans K --fit FEATS --codebook CB.npy: learn K units on stored
    features (HuBERT-style) and save the codebook; given FEATS OUT as well (or
    later, with --codebook), assign each frame its unit. Codebook usage and
    perplexity are reported on stderr.

    \b
    Examples:
      w2v quantize data/train.tsv codes.txt --model vq-wav2vec
      w2v featurize data/train feats.h5 --model wav2vec2-base --layer 6
      w2v quantize --kmeans 100 --fit feats.h5 --codebook km100.npy feats.h5 units.txt --dedup
    """
    from w2vtools.errors import W2VError

    if kmeans is not None or fit is not None:
        if kmeans is None or fit is None or codebook is None:
            raise W2VError("k-means needs --kmeans K, --fit FEATS and --codebook FILE.npy together")
        if model is not None:
            raise W2VError("--model and --kmeans are different modes; use one")
        if (source is None) != (out is None):
            raise W2VError("after fitting, give both FEATS and OUT to assign units (or neither)")
        from w2vtools import quantize as q

        centroids = q.fit_kmeans(fit, kmeans, max_frames=max_frames, iterations=iterations, seed=seed)
        q.save_codebook(codebook, centroids)
        if source is not None:
            q.assign_units(source, centroids, out, dedup=dedup)
        return
    if source is None or out is None:
        raise W2VError("expected MANIFEST OUT --model CKPT, or FEATS OUT --codebook CB.npy, or --kmeans K --fit FEATS")
    if model is not None and codebook is not None:
        raise W2VError("--model and --codebook are different modes; use one")
    if codebook is not None:
        from w2vtools import quantize as q

        q.assign_units(source, q.load_codebook(codebook), out, dedup=dedup)
        return
    if model is None:
        raise W2VError("which units? give --model CKPT (model codes) or --codebook CB.npy (k-means units)")
    from w2vtools.quantize import quantize_audio

    quantize_audio(source, out, model=model, index=index, dedup=dedup, device=device, batch_seconds=batch_seconds,
                   threads=threads)
