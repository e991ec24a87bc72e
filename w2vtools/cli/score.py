"""``w2v score``: WER/CER exactly as Kaldi's compute-wer prints it."""

from __future__ import annotations

import click


@click.command(
    "score",
    short_help="WER/CER exactly as Kaldi's compute-wer prints it, with details.",
    context_settings={"max_content_width": 100},
    epilog="""\b
Example:
  w2v score data/test/text exp/decode/hyp.txt --details exp/decode/scoring
  %WER 9.10 [ 4786 / 52576, 708 ins, 464 del, 3614 sub ]
  %SER 62.90 [ 1648 / 2620 ]
  Scored 2620 sentences, 0 not present in hyp.
""",
)
@click.argument("ref", metavar="REF")
@click.argument("hyp", metavar="HYP")
@click.option("--cer", is_flag=True, help="Score characters (spaces between words count) instead of words.")
@click.option(
    "--mode",
    type=click.Choice(["strict", "present", "all"]),
    default="strict",
    show_default=True,
    help="strict: fail on a missing hypothesis; present: score only utterances with one "
    "(line marked [PARTIAL]); all: a missing hypothesis is empty.",
)
@click.option("--utt2spk", type=click.Path(dir_okay=False), help="Kaldi utt2spk for the per-speaker table and trn ids.")
@click.option("--details", "details_dir", type=click.Path(file_okay=False), help="Write per_utt, per_spk and ops here.")
@click.option("--trn", "trn_dir", type=click.Path(file_okay=False), help="Write sclite ref.trn and hyp.trn here.")
@click.option("--ignore-case", is_flag=True, help="Fold both sides to upper case before scoring.")
@click.option(
    "--remove-nonwords",
    is_flag=True,
    help="Drop Kaldi non-word tokens (<unk>, <noise>, [laughter], ...: tokens in <> or []) from both sides.",
)
def command(ref, hyp, cer, mode, utt2spk, details_dir, trn_dir, ignore_case, remove_nonwords):
    """Score hypotheses HYP against references REF, both Kaldi `text` files
    (`uid word word ...`); either one (not both) may be `-` for stdin.

    Prints Kaldi compute-wer's three lines on stdout: %WER (or %CER) with
    errors / reference tokens and the ins/del/sub split, %SER, and the number of
    sentences scored. Counts follow Kaldi's edit-distance conventions exactly;
    sclite and jiwer agree on the totals but may split ties between
    insertions, deletions and substitutions differently.
    """
    from w2vtools.score import score_files

    result = score_files(
        ref,
        hyp,
        mode=mode,
        cer=cer,
        fold_case=ignore_case,
        remove_nonwords=remove_nonwords,
        utt2spk=utt2spk,
        details_dir=details_dir,
        trn_dir=trn_dir,
    )
    click.echo(result.format())
