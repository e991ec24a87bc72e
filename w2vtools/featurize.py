"""``w2v featurize``: a corpus in, frame-level features out (HDF5, Kaldi ark/scp, h5context).

The pipeline, streaming so memory does not grow with the corpus:

1. read the corpus (:func:`~w2vtools.formats.corpus.read_corpus`), keep shard K of N;
2. learn every utterance's length without decoding it (manifest or header:
   :func:`~w2vtools.batching.utterance_length`), resampled to the model's rate;
   skip those an interrupted run already finished;
3. plan length-sorted batches bounded by padded audio seconds; recordings longer than
   ``chunk_seconds`` go alone, in overlapping windows;
4. decode and resample audio in background threads while the model runs;
5. run the encoder under ``torch.inference_mode`` with padding masks (an utterance's
   features are the same batched or alone), keep each row's real frames; on a CPU,
   ``streams`` batches run at once, each with single-threaded ops (see :func:`featurize`).
   Steps 3-5 are the corpus runner's (:mod:`w2vtools.runner`), shared with quantize,
   decode and align;
6. write through the one feature writer (:func:`~w2vtools.formats.features.open_feature_writer`),
   in the plan's order whatever the number of streams, which makes finished
   utterances crash-safe and commits atomically.

Example:
    >>> summary = featurize("data/train.tsv", "feats.h5", model="wav2vec2-base", layer=6)  # doctest: +SKIP
    >>> summary.utterances, summary.failures              # doctest: +SKIP
    (2700, 0)
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from w2vtools.batching import SkipLog, input_identity, parse_shard
from w2vtools.encoders import Encoder, load_encoder
from w2vtools.errors import W2VError
from w2vtools.fileio import atomic_write, exclusive_output
from w2vtools.formats.durations import format_duration
from w2vtools.formats.features import merge_features, open_feature_writer, output_paths
from w2vtools.formats.kaldi import read_kaldi_table, write_kaldi_table
from w2vtools.formats.utterance import Utterance
from w2vtools.runner import (
    CPU_BATCH_SECONDS,  # noqa: F401  (featurize's documented CPU default; the runner owns it)
    Runner,
    check_device,
    check_int8,
    corpus_utterances,
    default_batch_seconds,
    plan_corpus,
    prepare_model,
    run_corpus,
    thread_settings,
)

log = logging.getLogger("w2v.featurize")


# ---------------------------------------------------------------------------------------------
# What to extract


@dataclass(frozen=True)
class Selection:
    """Which representation: ``output`` and ``layer`` as the encoder contract takes them."""

    output: str = "default"
    layer: int | str | None = None

    @property
    def label(self) -> str:
        if self.output == "layer":
            return f"layer {self.layer}"
        return self.output


def make_selection(family: str, *, output: str | None = None, layer: int | None = None, all_layers: bool = False) -> Selection:
    """Check the ``--output/--layer/--layers`` combination against the model family.

    Example:
        >>> make_selection("wav2vec2", layer=6)
        Selection(output='layer', layer=6)
        >>> make_selection("wav2vec", output="z")
        Selection(output='z', layer=None)
    """
    chosen = sum(x is not None and x is not False for x in (output, layer, all_layers or None))
    if chosen > 1:
        raise W2VError("choose one of --output, --layer and --layers all")
    if family in ("fbank", "mfcc"):
        if chosen:
            raise W2VError(f"--model {family} has no layers or outputs to choose from")
        return Selection()
    if family == "wav2vec2":
        if output in ("c", "q"):
            raise W2VError(
                f"--output {output}: wav2vec 2.0 outputs a Transformer layer (--layer N, --layers all) or z "
                "(its CNN output); quantizer codes come from `w2v quantize`"
            )
        if output == "z":
            return Selection("z")
        if all_layers:
            return Selection("layer", "all")
        if layer is not None:
            if layer < 0:
                raise W2VError(f"--layer {layer}: layers count from 0 (the Transformer input)")
            return Selection("layer", int(layer))
        return Selection()
    if family == "unit-bert":
        if output is not None or all_layers:
            raise W2VError("--bert: the features are a BERT layer (--layer N, 0 = its embeddings; default: the last)")
        if layer is not None and layer < 0:
            raise W2VError(f"--layer {layer}: layers count from 0 (the BERT's embeddings)")
        return Selection("layer", int(layer)) if layer is not None else Selection()
    # wav2vec / vq-wav2vec
    if layer is not None or all_layers:
        raise W2VError(f"--layer/--layers: a {family} model has no Transformer layers; use --output c, z or q")
    if output == "q" and family != "vq-wav2vec":
        raise W2VError("--output q needs a vq-wav2vec model")
    return Selection(output or "default")


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Summary:
    utterances: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    num_frames: dict[str, int] = field(default_factory=dict)
    skips: SkipLog = field(default_factory=lambda: SkipLog(log))
    identity: dict[str, str] = field(default_factory=dict)  # uid -> input_identity, recorded with the features

    @property
    def failures(self) -> int:
        return len(self.skips)

    @property
    def failed(self) -> list[str]:
        return self.skips.uids

    @property
    def speed(self) -> float:
        """Audio seconds per wall-clock second."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def line(self, out: str) -> str:
        return (
            f"featurize: {self.utterances} utterances ({format_duration(self.audio_seconds)}) in {self.wall_seconds:.1f} s, "
            f"{self.speed:.1f} audio-s/s, {self.skipped} already done, {self.failures} failed -> {out}"
        )


def feature_runner(encoder: Encoder, selection: Selection = Selection(), *, device: str = "cpu", amp: bool = False,
                   chunk_seconds: float = 60.0, chunk_overlap: float = 2.0,
                   batch_seconds: float | None = None, int8: bool = False) -> Runner:
    """The :class:`~w2vtools.runner.Runner` of an encoder's chosen representation.

    All layers (``selection.layer == "all"``) come side by side, ``(T, (L+1)*D)``, layer 0 first.
    With ``int8`` the encoder's module is quantized in place (:func:`~w2vtools.runner.prepare_model`).

    Example:
        >>> import numpy as np
        >>> fx = feature_runner(load_encoder("fbank"))
        >>> [x.shape for x in fx([np.zeros(16000, np.float32), np.zeros(8000, np.float32)])]
        [(98, 80), (48, 80)]
    """
    module = encoder.module
    if isinstance(module, torch.nn.Module):
        module = prepare_model(module, device, int8=int8, amp=amp, name=encoder.name)
    elif int8:
        raise W2VError(f"--int8: {encoder.name} has no layers to quantize")
    limit = getattr(module, "max_seconds", None)  # a model with a fixed number of positions (unit BERT)
    if limit is not None and chunk_seconds + 2 * chunk_overlap > limit:
        chunk_overlap = min(chunk_overlap, limit / 8)
        chunk_seconds = min(chunk_seconds, limit - 2 * chunk_overlap)
        log.info("%s takes %.2f s at once: longer recordings run in windows of %.2f s with %.2f s of context "
                 "each side", encoder.name, limit, chunk_seconds, chunk_overlap)

    def forward(source, mask):
        out = module.extract_features(source, mask, output=selection.output, layer=selection.layer)
        feats = out.features
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=-1)
        return feats, out.padding_mask

    return Runner(forward, num_frames=module.num_frames, sample_rate=int(module.sample_rate),
                  frame_shift=float(module.frame_shift), device=device, amp=amp, chunk_seconds=chunk_seconds,
                  chunk_overlap=chunk_overlap, batch_seconds=batch_seconds)


def featurize(
    corpus: str,
    out: str,
    *,
    model: str | Encoder = "fbank",
    bert: str | None = None,
    output: str | None = None,
    layer: int | None = None,
    all_layers: bool = False,
    device: str = "cpu",
    amp: bool = False,
    batch_seconds: float | None = None,
    chunk_seconds: float = 60.0,
    chunk_overlap: float = 2.0,
    shard: str | tuple[int, int] | None = None,
    dtype: str = "float32",
    format: str | None = None,
    threads: int | None = None,
    streams: int | None = None,
    workers: int = 2,
    flush_every: float = 30.0,
    progress: bool | None = None,
    resume: bool = True,
    int8: bool = False,
) -> Summary:
    """Featurize a corpus into ``out`` (see the module doc); returns a :class:`Summary`.

    Args:
        corpus: TSV manifest, Kaldi data dir, ``wav.scp`` or ``-``.
        out: ``*.h5``, a Kaldi wspecifier, a Kaldi data dir (writes ``feats.scp``,
            ``utt2num_frames``, ``frame_shift`` and ``data/raw_feats.ark`` in it), or a
            folder with ``format="h5context"``.
        model: ``fbank``, ``mfcc``, a named model, a checkpoint path or folder, or an :class:`Encoder`.
        bert: a unit BERT reading ``model``'s quantizer codes: the features are then a
            BERT layer (``layer``; default the last) per code frame
            (:func:`~w2vtools.encoders.load_encoder`).
        output, layer, all_layers: which representation (see :func:`make_selection`);
            all layers are stored side by side, ``(T, (L+1)*D)``, layer 0 first.
        device: ``cpu`` or ``cuda[:N]``; amp: autocast on that device.
        int8: quantize the model's linear and dense convolution layers to int8 for a CPU run
            (:mod:`w2vtools.models.int8`; an :class:`Encoder` given is quantized in place).
            Speed and error against float32: BENCHMARKS.md. Recorded as the attribute
            ``model_precision = "int8"``.
        batch_seconds: budget of padded audio seconds per batch (None: 200 on a GPU,
            where big batches pay; :data:`CPU_BATCH_SECONDS` on a CPU, where batching
            saves nothing and small batches keep every stream busy to the end).
            On a CPU, featurize also has glibc keep freed memory for reuse
            (:func:`w2vtools.malloc.keep_freed_memory`, ``one_arena=True``; process-wide,
            ``W2V_MALLOC=system`` to opt out): the next batch's tensors then reuse this
            one's pages instead of faulting in fresh zeroed ones.
        chunk_seconds, chunk_overlap: recordings longer than ``chunk_seconds`` run in
            windows of that length with ``chunk_overlap`` seconds of context each side.
        shard: ``"K/N"`` or (K, N), 1-based.
        dtype: ``float32`` or ``float16`` (HDF5 only).
        threads: CPU threads in all (None: :func:`w2vtools.threads.default_threads`).
        streams: batches computed at once, each in its own Python thread with
            ``threads // streams`` intra-op threads (None: ``threads`` on a CPU, 1 on a
            GPU). Torch ops release the GIL, so the streams run side by side. On an idle
            machine this is as fast as one many-threaded batch at a time; on a shared one,
            single-threaded streams lose less to other processes (BENCHMARKS.md).
            The output is the same whatever the number of streams:
            results are written in the plan's order. Memory: at most ``streams``
            batches computing plus ``streams`` finished ones waiting for their turn.
        workers: audio-loading threads (0: load in the main thread).
        flush_every: seconds between crash-safe flushes of finished utterances.
        progress: tqdm bar on stderr (None: when stderr is a terminal).
        resume: keep what an interrupted run with the same OUT finished.

    Raises:
        W2VError: bad options or input; PartialFailure: some utterances could not be
            featurized (the rest are written; the summary names them).
    """
    if dtype not in ("float32", "float16"):
        raise W2VError(f"--dtype {dtype}: choose float32 or float16")
    check_int8(int8, device, amp)
    check_device(device)
    if batch_seconds is None:
        batch_seconds = default_batch_seconds(device)
    if batch_seconds <= 0 or chunk_seconds <= 0 or chunk_overlap < 0:
        raise W2VError("--batch-seconds and --chunk-seconds must be positive, --chunk-overlap not negative")
    with thread_settings(device, threads, streams) as streams:
        return _featurize(
            corpus, out, model=model, bert=bert, output=output, layer=layer, all_layers=all_layers, device=device,
            amp=amp,
            batch_seconds=batch_seconds, chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, shard=shard,
            dtype=dtype, format=format, streams=streams, workers=workers, flush_every=flush_every,
            progress=progress, resume=resume, int8=int8,
        )


def _featurize(corpus, out, *, model, bert, output, layer, all_layers, device, amp, batch_seconds, chunk_seconds,
               chunk_overlap, shard, dtype, format, streams, workers, flush_every, progress, resume,
               int8=False) -> Summary:
    """:func:`featurize` once the thread settings are in place: ids checked and the output
    locked before the model loads, so a bad id or a second writer fails at once."""
    shard_kn = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    utts = corpus_utterances(corpus, shard_kn)
    data_dir = _kaldi_data_dir(out, format)
    shard_suffix = f".{shard_kn[0]}" if shard_kn else ""
    spec = out if data_dir is None else _data_dir_spec(data_dir, shard_suffix)
    with exclusive_output(*output_paths(spec, format=format)):
        encoder = model if isinstance(model, Encoder) else load_encoder(model, device=device, bert=bert)
        selection = make_selection(encoder.family, output=output, layer=layer, all_layers=all_layers)
        fx = feature_runner(encoder, selection, device=device, amp=amp, chunk_seconds=chunk_seconds,
                            chunk_overlap=chunk_overlap, batch_seconds=batch_seconds, int8=int8)
        attrs = _feature_attrs(encoder, selection, fx.sample_rate)
        if int8:
            attrs["model_precision"] = "int8"  # only then: float32 outputs keep the attributes they always had
        # what else decides the features: a resumed run must match it (the output does not record it)
        settings = {"dtype": dtype, "amp": bool(amp), "chunk_seconds": chunk_seconds, "chunk_overlap": chunk_overlap}
        summary = Summary()
        t0 = time.monotonic()
        with open_feature_writer(spec, attrs, format=format, dtype=dtype, flush_every=flush_every, resume=resume,
                                 settings=settings) as writer:
            todo = _to_do(writer, utts, summary, out, corpus, shard_kn)
            jobs, total_seconds = plan_corpus(todo, fx, summary.skips)
            log.debug("%d batches on %s, %d stream(s) x %d thread(s)", len(jobs), device, streams,
                      torch.get_num_threads())
            _write_all(run_corpus(jobs, fx, summary.skips, streams=streams, workers=workers), writer, summary,
                       fx.sample_rate, _progress_bar(total_seconds, progress))
            if not writer.num_frames:
                writer.discard()  # every utterance failed: no output, no partial state
                summary.skips.check_some_written(0, out)
    summary.wall_seconds = time.monotonic() - t0
    summary.num_frames = dict(writer.num_frames)
    if data_dir is not None:
        _write_data_dir_tables(data_dir, writer.num_frames, attrs["frame_shift"], shard_suffix)
    log.info(summary.line(out))
    summary.skips.raise_if_any(len(utts), out)
    return summary


def _write_all(results, writer, summary: Summary, sample_rate: int, bar) -> None:
    """Write the runner's results (in the plan's order, so the same for any number of streams)."""
    try:
        for u, n, x in results:
            writer.write(u.uid, x, identity=summary.identity.get(u.uid, ""))
            summary.utterances += 1
            summary.audio_seconds += n / sample_rate
            if bar is not None:
                bar.update(n / sample_rate)
    finally:
        if bar is not None:
            bar.close()


def _to_do(writer, utts: Sequence[Utterance], summary: Summary, out: str, corpus: str,
           shard: tuple[int, int] | None) -> list[Utterance]:
    """The utterances still to compute: those not finished by an interrupted run, and those
    whose audio changed since it computed them (their old features are dropped first)."""
    _check_resumable(writer, utts, out, corpus, shard)
    summary.identity = {u.uid: input_identity(u) for u in utts}
    changed = [u.uid for u in utts if writer.identities.get(u.uid) not in ("", None, summary.identity[u.uid])]
    if changed:
        redo = writer.forget(changed)
        log.warning("%s: the audio of %d finished utterances changed since the interrupted run (e.g. %r): "
                    "computing %d again", out, len(changed), changed[0], len(redo))
    summary.skipped = sum(u.uid in writer.done for u in utts)
    if summary.skipped:
        log.info("resuming %s: %d utterances already done, %d to go", out, summary.skipped, len(utts) - summary.skipped)
    return [u for u in utts if u.uid not in writer.done]


def _feature_attrs(encoder: Encoder, selection: Selection, sample_rate: int) -> dict:
    """The attributes a feature file records: what produced it and how to read its frames."""
    n_layers = getattr(getattr(encoder.module, "cfg", None), "encoder_layers", None)
    if encoder.family == "unit-bert":
        n_layers = encoder.module.num_layers
    if isinstance(selection.layer, int) and n_layers is not None and selection.layer > n_layers:
        raise W2VError(f"--layer {selection.layer}: {encoder.name} has layers 0..{n_layers}")
    attrs = {
        "frame_shift": float(encoder.module.frame_shift),
        "sample_rate": sample_rate,
        "model": encoder.name,
        "model_sha256": encoder.sha256,
        "family": encoder.family,
        "output": selection.output,
        "layer": "" if selection.layer is None else str(selection.layer),
    }
    if selection.layer == "all" and n_layers is not None:
        # (T, num_layers * D), layer 0 (the Transformer input) first
        attrs["num_layers"] = int(n_layers) + 1
    attrs.update(getattr(encoder.module, "feature_attrs", {}))  # fbank/MFCC: num_mel_bins, num_ceps
    return attrs


def _check_resumable(writer, utts: Sequence[Utterance], out: str, corpus: str, shard: tuple[int, int] | None) -> None:
    """An interrupted run may be resumed only on the corpus (and shard) it was started on."""
    stale = writer.done - {u.uid for u in utts}
    if stale:
        raise W2VError(
            f"{out}: the interrupted run being resumed holds {len(stale)} utterances that are not in "
            f"{corpus}{' shard ' + str(shard[0]) + '/' + str(shard[1]) if shard else ''} "
            f"(e.g. {sorted(stale)[0]!r}); rerun with --no-resume to start over"
        )


def _progress_bar(total_seconds: float, progress: bool | None):
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    if disable:
        return None
    return tqdm(total=round(total_seconds, 2), unit="s", unit_scale=False, desc="featurize (audio s)", file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]")


def _kaldi_data_dir(out: str, format: str | None) -> Path | None:
    p = Path(out)
    if format is None and p.is_dir() and (p / "wav.scp").is_file():
        return p
    return None


def _data_dir_spec(data_dir: Path, shard_suffix: str) -> str:
    """The wspecifier that writes ``data/raw_feats.ark`` and ``feats.scp`` into a Kaldi data dir."""
    (data_dir / "data").mkdir(exist_ok=True)
    ark = (data_dir / "data" / f"raw_feats{shard_suffix}.ark").resolve()  # Kaldi's scps hold absolute ark paths
    return f"ark,scp:{ark},{data_dir / f'feats{shard_suffix}.scp'}"


def _write_data_dir_tables(data_dir: Path, num_frames: dict[str, int], frame_shift: float, suffix: str) -> None:
    write_kaldi_table(data_dir / f"utt2num_frames{suffix}", num_frames)
    with atomic_write(data_dir / "frame_shift") as f:
        f.write(f"{frame_shift:g}\n")


def merge(inputs: Sequence[str], out: str, *, format: str | None = None) -> int:
    """Join shard outputs (see :func:`w2vtools.formats.features.merge_features`).

    For a Kaldi data dir ``out``, joins ``feats.K.scp`` and ``utt2num_frames.K`` given as
    inputs (or found in it when ``inputs`` is empty) into ``feats.scp`` and ``utt2num_frames``.
    """
    data_dir = _kaldi_data_dir(out, format)
    if data_dir is None:
        return merge_features(list(inputs), out, format=format)

    scps = [Path(p) for p in inputs] or sorted(
        data_dir.glob("feats.*.scp"), key=lambda p: int(p.name.split(".")[1]) if p.name.split(".")[1].isdigit() else 0
    )
    if not scps:
        raise W2VError(f"{data_dir}: no feats.K.scp shard files to merge")
    n = merge_features([str(p) for p in scps], str(data_dir / "feats.scp"))
    frames: dict[str, str] = {}
    for scp in scps:
        u2n = scp.with_name(scp.name.replace("feats", "utt2num_frames", 1).removesuffix(".scp"))
        if u2n.is_file():
            frames.update(read_kaldi_table(u2n))
    if frames:
        write_kaldi_table(data_dir / "utt2num_frames", frames)
    return n
