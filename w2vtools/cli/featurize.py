"""``w2v featurize``: turn a corpus into features (wav2vec family, fbank, MFCC)."""

from __future__ import annotations

import click

from w2vtools.cli.runner_options import INT8_OPTION


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="MANIFEST OUT")
@click.option("--model", "-m", default="fbank", show_default=True,
              help="A checkpoint (ours, fairseq .pt, Hugging Face folder), a named model "
                   "(wav2vec2-base, wav2vec2-large-lv60, xlsr-53, vq-wav2vec, wav2vec-large, ...; "
                   "see --list-models), or fbank / mfcc.")
@click.option("--bert", default=None, metavar="CHECKPOINT",
              help="A unit BERT (w2v pretrain --arch unit-bert, or fairseq RoBERTa on vq-wav2vec units) that reads "
                   "the codes of --model's quantizer: the features are its --layer per code frame.")
@click.option("--layer", type=int, default=None,
              help="wav2vec 2.0: Transformer layer N (0 = its input); --bert: BERT layer N (0 = its embeddings). "
                   "Default: last.")
@click.option("--layers", type=click.Choice(["all"]), default=None,
              help="wav2vec 2.0: every layer, stored side by side as (T, (L+1)*D), layer 0 first.")
@click.option("--output", "output", type=click.Choice(["c", "z", "q"]), default=None,
              help="wav2vec/vq-wav2vec: context c (default), encoder z, quantized q; wav2vec 2.0: z = CNN output.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--amp", is_flag=True, help="Autocast the model (float16 on CUDA, bfloat16 on CPU; on a CPU without bf16 "
              "instructions that is slower, and w2v warns).")
@INT8_OPTION
@click.option("--batch-seconds", type=float, default=None,
              help="Padded audio seconds per batch (memory bound). Default: 200 on a GPU, 5 on a CPU.")
@click.option("--chunk-seconds", type=float, default=60.0, show_default=True,
              help="Longer recordings run in windows of this length.")
@click.option("--chunk-overlap", type=float, default=2.0, show_default=True,
              help="Seconds of context each side of a window.")
@click.option("--shard", default=None, metavar="K/N", help="Process the K-th (1-based) of N contiguous parts.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored precision (float16: HDF5 only).")
@click.option("--format", "fmt", type=click.Choice(["h5context"]), default=None,
              help="h5context: fairseq/wav2letter's one file per utterance in the folder OUT.")
@click.option("--sample-rate", type=int, default=None,
              help="fbank/mfcc: resample the audio to this rate (default 16000; 8000 keeps 8 kHz audio as it is).")
@click.option("--num-mel-bins", type=int, default=None, help="fbank/mfcc: mel bins (default: fbank 80, mfcc 23).")
@click.option("--num-ceps", type=int, default=None, help="mfcc: cepstra kept (default 13).")
@click.option("--threads", type=int, default=None,
              help="CPU threads in all (default: the CPUs this process may use that other processes are not "
                   "keeping busy, by the 1-minute load average, at least 1; $OMP_NUM_THREADS wins if set).")
@click.option("--streams", type=int, default=None,
              help="Batches computed at once, each with --threads/--streams op threads "
                   "(default: --threads on a CPU, 1 on a GPU). Same output whatever the number.")
@click.option("--workers", type=int, default=2, show_default=True, help="Audio decoding threads.")
@click.option("--flush-every", type=float, default=30.0, show_default=True,
              help="Seconds between crash-safe saves of finished utterances (0: after each).")
@click.option("--no-resume", is_flag=True, help="Start over even if an interrupted run left partial output.")
@click.option("--progress/--no-progress", default=None, help="tqdm bar on stderr (default: when a terminal).")
@click.option("--merge", is_flag=True, help="Join shard outputs instead: w2v featurize --merge IN... OUT.")
@click.option("--list-models", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, p, v: _list_models(ctx) if v else None, help="List the named models and exit.")
def command(args, model, bert, layer, layers, output, device, amp, int8, batch_seconds, chunk_seconds, chunk_overlap,
            shard, dtype, fmt, sample_rate, num_mel_bins, num_ceps, threads, streams, workers, flush_every, no_resume,
            progress, merge):
    """Featurize MANIFEST (TSV, Kaldi data dir, wav.scp or -) into OUT.

    OUT decides the format: NAME.h5 (one (T, D) dataset per utterance, ids with
    '%' -> '%25' and '/' -> '%2F'; attributes frame_shift, sample_rate, model,
    model_sha256, layer), a Kaldi wspecifier (ark:-, ark:f.ark, ark,scp:f.ark,f.scp),
    a Kaldi data dir (writes feats.scp, utt2num_frames, frame_shift and
    data/raw_feats.ark into it), or a folder with --format h5context.

    With --bert, --model's quantizer (vq-wav2vec) turns the audio into codes and the
    unit BERT reads them as '<s> codes </s>': one feature vector per code frame
    (10 ms), from BERT layer --layer; recordings longer than the BERT's positions
    (5.1 s for 512) run in overlapping windows.

    A rerun after a crash (or a full disk) keeps the finished utterances and does
    the rest, recomputing those whose audio changed (size or mtime); partial output
    made with other settings is refused. Resumed model features may differ from an
    uninterrupted run by float32 rounding (batches differ); fbank/MFCC are exact.
    The output appears only when complete, and one process writes it at a time
    (OUT.lock holds its pid). A bad utterance is named and skipped: exit 3 when some
    were, 1 and no output when all were. With --shard K/N, write one output per
    shard, then join them with --merge.

    \b
    Examples:
      w2v featurize data/train.tsv feats.h5 --model wav2vec2-base --layer 6
      w2v featurize data/train.tsv feats.h5 --model wav2vec2-base --int8   # CPU, int8 kernels
      w2v featurize data/train ark:- --model mfcc | copy-feats ark:- ark,scp:m.ark,m.scp
      w2v featurize fsdd/wav.scp fbank8k.h5 --model fbank --sample-rate 8000 --num-mel-bins 40
      w2v featurize data/train feats.JOB.h5 --model xlsr-53 --shard JOB/8   # JOB=1..8
      w2v featurize --merge feats.1.h5 feats.2.h5 feats.h5
      w2v featurize data/train.tsv bert.h5 --model vq-wav2vec --bert exp/bert/checkpoint_best.pt --layer 1
    """
    from w2vtools.errors import W2VError

    if merge:
        if len(args) < 2:
            raise W2VError("--merge needs the shard outputs and then the output: --merge IN... OUT")
        from w2vtools.featurize import merge as merge_outputs
        import logging

        n = merge_outputs(list(args[:-1]), args[-1], format=fmt)
        logging.getLogger("w2v.featurize").info("merged %d utterances into %s", n, args[-1])
        return
    if len(args) != 2:
        raise W2VError(f"expected MANIFEST OUT, got {len(args)} arguments")
    from w2vtools.featurize import featurize
    from w2vtools.models.baselines import baseline_options

    model = baseline_options(model, sample_rate=sample_rate, num_mel_bins=num_mel_bins, num_ceps=num_ceps)
    featurize(
        args[0], args[1], model=model, bert=bert, output=output, layer=layer, all_layers=layers == "all",
        device=device,
        amp=amp, batch_seconds=batch_seconds, chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap,
        shard=shard, dtype=dtype, format=fmt, threads=threads, streams=streams, workers=workers, flush_every=flush_every,
        progress=progress, resume=not no_resume, int8=int8,
    )


def _list_models(ctx):
    from w2vtools.models.hub import describe, home

    click.echo(describe())
    click.echo(f"\ncache: {home()}/models (set W2V_HOME to move it)")
    ctx.exit(0)
