"""``w2v align``: CTC forced alignment of transcripts: CTM, word segments, TextGrid."""

from __future__ import annotations

import click

from w2vtools.cli.runner_options import runner_options

EXAMPLE = """\b
Examples:
  # word times and confidences of known transcripts, from a fine-tuned model
  w2v align data/test.tsv data/kaldi/test/text --model exp/ft/checkpoint_best.pt -o exp/align/words.ctm
  # from stored emissions (w2v decode --dump-emissions), with letters and Praat TextGrids
  w2v align --emissions exp/em.h5 data/kaldi/test/text -o words.ctm --letter-ctm letters.ctm \\
      --textgrid exp/align/textgrid --data-dir exp/align/words
  # long recordings (audiobook chapters) with their whole text -> utterances of at most 15 s
  w2v align data/chapters data/chapters/text --model exp/ft/checkpoint_best.pt -o /dev/null \\
      --segment data/chapters_seg --max-segment-seconds 15
  w2v manifest --from-kaldi data/chapters_seg --dest data
"""


@click.command("align", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=EXAMPLE)
@click.argument("inputs", nargs=-1, required=True, metavar="[CORPUS] TEXT")
@click.option("--model", help="CTC checkpoint (ours, fairseq .pt, Hugging Face folder, or a named model) run over CORPUS.")
@click.option("--emissions", help="Stored CTC scores instead of CORPUS and --model (HDF5/ark/scp from w2v decode "
              "--dump-emissions, or .npy logits).")
@click.option("--dict", "dict_path", type=click.Path(dir_okay=False),
              help="dict.ltr.txt giving the class order of .npy emissions.")
@click.option("-o", "--ctm", default="-", show_default=True,
              help="Word CTM: 'uid 1 start duration WORD confidence' ('-' = stdout).")
@click.option("--letter-ctm", type=click.Path(dir_okay=False), help="Also write letter segments as CTM.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Also write a Kaldi data dir of word segments (segments, text, utt2spk, wav.scp).")
@click.option("--textgrid", "textgrid_dir", type=click.Path(file_okay=False),
              help="Also write one Praat TextGrid per utterance (tiers: words, letters) into this folder.")
@click.option("--segment", "segment_dir", type=click.Path(file_okay=False),
              help="Also cut each (long) recording into utterances at the longest pauses between aligned words: "
              "a Kaldi data dir (segments, text, utt2spk, spk2utt, wav.scp) for w2v manifest --from-kaldi.")
@click.option("--max-segment-seconds", type=float, default=20.0, show_default=True,
              help="With --segment: cut until every utterance's words span at most this long.")
@click.option("--min-confidence", type=float, default=0.0, show_default=True,
              help="With --segment: leave out (and name) utterances whose mean word confidence is lower.")
@click.option("--star", is_flag=True,
              help="Align words with letters outside the model's alphabet to a wildcard (<star>, as MMS does) "
              "instead of leaving their utterance out.")
@click.option("--frame-shift", type=float, help="Seconds per frame [default: from the emissions, else 0.02].")
@click.option("--device", default="cpu", show_default=True, help="Device for --model.")
@runner_options
def command(inputs, model, emissions, dict_path, ctm, letter_ctm, data_dir, textgrid_dir, segment_dir,
            max_segment_seconds, min_confidence, star, frame_shift, device, int8, batch_seconds, chunk_seconds,
            chunk_overlap):
    """Force-align the transcripts in TEXT (Kaldi text: `uid WORD WORD ...`) to a CTC model's
    output over CORPUS (TSV manifest, Kaldi data dir, wav.scp), or to stored --emissions.

    The path is the CTC Viterbi path (torchaudio's forced_align) through the
    transcript's letters with `|` between words. Each word and letter gets its
    start, duration and a confidence: the mean posterior of the path's frames.
    Utterances that cannot be aligned (letters outside the alphabet without
    --star, a transcript longer than the frames allow, no transcript or no
    emission) are named on stderr and left out: exit 3, or 1 when none is left.
    With --emissions, a CORPUS is optional: it names the recordings for the
    wav.scp of --data-dir and --segment. Long recordings run in windows and
    align in bounded memory, so --segment takes whole audiobook chapters.
    """
    import logging

    from w2vtools.align import AlignOutputs, align
    from w2vtools.batching import SkipLog
    from w2vtools.emissions import model_emissions, stored_emissions
    from w2vtools.fileio import exclusive_output
    from w2vtools.formats.corpus import read_corpus
    from w2vtools.formats.labels import normalize_words
    from w2vtools.formats.text import read_text_table

    if emissions and (len(inputs) not in (1, 2) or model):
        raise click.UsageError("with --emissions give [CORPUS] TEXT (no --model)")
    if max_segment_seconds <= 0:
        raise click.UsageError("--max-segment-seconds must be positive")
    if not emissions and (len(inputs) != 2 or not model):
        raise click.UsageError("give CORPUS TEXT --model M, or --emissions E TEXT")
    if int8 and emissions:
        raise click.UsageError("--int8 quantizes a model run over CORPUS; stored --emissions have none")
    transcripts = {uid: normalize_words(" ".join(words)).split() for uid, words in read_text_table(inputs[-1]).items()}
    log = logging.getLogger("w2v.align")
    skips = SkipLog(log)
    # one writer per output, taken before the model loads
    with exclusive_output(ctm, letter_ctm, data_dir, textgrid_dir, segment_dir):
        recordings = {u.uid: u.source for u in read_corpus(inputs[0]) if u.start is None} if len(inputs) == 2 else {}
        if emissions:
            source = stored_emissions(emissions, dict_path=dict_path, frame_shift=frame_shift)
        else:
            source = model_emissions(inputs[0], model, device=device, batch_seconds=batch_seconds, skips=skips,
                                     chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, int8=int8)
            if frame_shift:
                source.frame_shift = frame_shift
        outputs = AlignOutputs(ctm=ctm, letter_ctm=letter_ctm, data_dir=data_dir, textgrid_dir=textgrid_dir,
                               recording_of=recordings, segment_dir=segment_dir,
                               max_segment_seconds=max_segment_seconds, min_confidence=min_confidence)
        summary = align(source, transcripts, outputs, star=star, model_skips=skips)
    log.info(summary.line())
