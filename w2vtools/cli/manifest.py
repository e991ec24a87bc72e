"""``w2v manifest``: fairseq TSV manifests, labels, and Kaldi data dirs (both ways)."""

from __future__ import annotations

import click


EPILOG = """\b
Examples:
  w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.01 \\
      --labels LibriSpeech/train-clean-100
  w2v manifest data/train.tsv data/valid.tsv --labels LibriSpeech/train-clean-100
  w2v manifest data/train.tsv --to-kaldi data/kaldi/train
  w2v manifest --validate-kaldi data/kaldi/train
  w2v manifest --fix-kaldi data/kaldi/train     # then --validate-kaldi again
  w2v manifest --from-kaldi data/kaldi/test --dest data
  w2v manifest fsdd/recordings --dest fsdd_data --ext wav --valid-percent 0.1 \\
      --speaker-pattern '^\\d+_([a-z]+)_' --to-kaldi fsdd_data/kaldi
  w2v manifest corpus/ --dest - --ext wav | head
"""


@click.command(
    "manifest",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("sources", nargs=-1, metavar="[ROOT | TSV...]")
@click.option("--dest", metavar="DIR", help="Output folder for NAME.tsv, valid.tsv and labels; '-' prints one TSV.")
@click.option("--ext", "exts", multiple=True, metavar="EXT", help="Audio extension to index (repeatable). [default: flac]")
@click.option("--valid-percent", type=float, default=None, metavar="P",
              help="Fraction of files for valid.tsv, 0-1. [default: 0.01; 0 with --from-kaldi]")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the train/valid assignment.")
@click.option("--path-must-contain", metavar="S", help="Index only files whose path contains S.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
              help="Threads reading audio headers. [default: 2 x cores, at most 16]")
@click.option("--name", default=None, metavar="NAME",
              help="Name of the main split file, NAME.tsv. [default: train; the data dir's name with --from-kaldi]")
@click.option("--valid-name", default="valid", show_default=True, metavar="NAME", help="Name of the valid split file.")
@click.option("--verify", is_flag=True, help="Decode every file, not only its header (finds truncated FLAC, NaN/Inf).")
@click.option("--labels", "transcripts", metavar="PATH",
              help="Transcripts for NAME.wrd/.ltr and dict.ltr.txt: a Kaldi text file, LibriSpeech *.trans.txt "
                   "(file or folder) or LJ Speech metadata.csv.")
@click.option("--dict", "dictionary", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Use this dict.ltr.txt instead of counting one; letters outside it are reported.")
@click.option("--keep-case", is_flag=True, help="Keep the transcripts' case (default: upper-case, as fairseq's recipe).")
@click.option("--utt2spk", "utt2spk_path", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Speaker of each utterance id ('uid speaker' lines).")
@click.option("--speaker-pattern", metavar="REGEX",
              help="Speaker = first group (or group 'spk') of REGEX over the utterance id. "
                   "[default: LibriSpeech ids, ^(\\d+)-\\d+-\\d+$]")
@click.option("--to-kaldi", metavar="DATA_DIR", help="Also (or only) write a Kaldi data dir.")
@click.option("--from-kaldi", metavar="DATA_DIR", help="Read a Kaldi data dir instead of scanning ROOT.")
@click.option("--root", "tsv_root", metavar="DIR", help="With --from-kaldi: the TSV root. [default: the files' common folder]")
@click.option("--validate-kaldi", metavar="DATA_DIR",
              help="Only check a Kaldi data dir as utils/validate_data_dir.sh does; exit 1 on problems.")
@click.option("--fix-kaldi", metavar="DATA_DIR",
              help="Only repair a Kaldi data dir as utils/fix_data_dir.sh does: make spk2utt, sort every table "
                   "(LC_ALL=C), keep the utterances every table has and whose audio exists; originals go to "
                   "DATA_DIR/.backup, counts of what was dropped and why to stderr.")
@click.option("--no-text", is_flag=True, help="With --validate-kaldi: a missing text file is fine.")
@click.option("--no-spk-sort", is_flag=True, help="With --validate-kaldi: do not require utt2spk sorted by speaker.")
def command(
    sources, dest, exts, valid_percent, seed, path_must_contain, jobs, name, valid_name, verify,
    transcripts, dictionary, keep_case, utt2spk_path, speaker_pattern, to_kaldi, from_kaldi, tsv_root,
    validate_kaldi, fix_kaldi, no_text, no_spk_sort,
):
    """Index audio into fairseq TSV manifests (train.tsv, valid.tsv), write the
    fairseq label files (.wrd, .ltr, dict.ltr.txt) and convert to and from Kaldi
    data dirs.

    ROOT is a folder scanned recursively for *.EXT, as fairseq's
    wav2vec_manifest.py does, but rows are sorted so reruns are byte-identical,
    and the train/valid assignment of a file depends only on --seed and its
    path. Given TSV files instead, labels (--labels) and/or a Kaldi dir
    (--to-kaldi) are written for them.

    Files that cannot be read are named on stderr as '<path>: <reason>'; the
    rest are written and the exit status is 3. Utterance ids are file names
    without extension (relative paths where names repeat). In Kaldi dirs, ids
    are prefixed '<speaker>-' when they do not start with their speaker.
    """
    import logging
    import os

    from w2vtools import manifest as lib
    from w2vtools.errors import W2VError
    from w2vtools.formats import kaldi, kaldi_fix

    log = logging.getLogger("w2v.manifest")

    if fix_kaldi:
        if sources or from_kaldi or to_kaldi or validate_kaldi:
            raise click.UsageError("--fix-kaldi takes only the data dir")
        for line in kaldi_fix.fix_data_dir(fix_kaldi).lines():
            click.echo(f"{fix_kaldi}: {line}", err=True)
        return
    if validate_kaldi:
        if sources or from_kaldi or to_kaldi:
            raise click.UsageError("--validate-kaldi takes only the data dir")
        problems = kaldi.validate_data_dir(validate_kaldi, no_text=no_text, no_spk_sort=no_spk_sort)
        for w in kaldi.data_dir_warnings(validate_kaldi):
            click.echo(f"{validate_kaldi}: warning: {w}", err=True)
        for p in problems:
            hint = kaldi_fix.fix_hint(p, validate_kaldi)
            click.echo(f"{validate_kaldi}: {p}" + (f"; {hint}" if hint else ""), err=True)
        if problems:
            raise W2VError(f"{validate_kaldi}: {len(problems)} problems (listed above)")
        log.info("%s: valid Kaldi data dir", validate_kaldi)
        return

    speakers = None
    if utt2spk_path or speaker_pattern:
        if utt2spk_path and speaker_pattern:
            raise click.UsageError("give --utt2spk or --speaker-pattern, not both")
        speakers = lib.SpeakerRule(
            utt2spk=kaldi.read_kaldi_table(utt2spk_path) if utt2spk_path else None, pattern=speaker_pattern
        )
    upper = not keep_case

    if from_kaldi:
        if sources:
            raise click.UsageError("--from-kaldi reads the data dir; give no ROOT")
        if not dest or dest == "-":
            raise click.UsageError("--from-kaldi needs --dest DIR")
        lib.from_kaldi(
            from_kaldi, dest, name=name, valid_name=valid_name, valid_percent=valid_percent or 0.0, seed=seed,
            jobs=jobs, root=tsv_root, dictionary=dictionary, upper=upper, verify=verify,
        )
        return

    if not sources:
        raise click.UsageError("give a ROOT folder to scan, TSV files, --from-kaldi, --validate-kaldi or --fix-kaldi")
    if len(sources) == 1 and os.path.isdir(sources[0]):
        if dest is None and to_kaldi is None:
            raise click.UsageError("give --dest DIR (or '-') and/or --to-kaldi DATA_DIR")
        lib.build_manifest(
            sources[0], dest, exts=list(exts) or ["flac"],
            valid_percent=0.01 if valid_percent is None else valid_percent, seed=seed,
            path_must_contain=path_must_contain, jobs=jobs, name=name or "train", valid_name=valid_name,
            transcripts=transcripts, dictionary=dictionary, upper=upper, speakers=speakers, verify=verify,
            to_kaldi=to_kaldi,
        )
        return

    for s in sources:
        if os.path.isdir(s):
            raise click.UsageError(f"{s}: give either one ROOT folder or TSV files, not both")
        if not os.path.exists(s):
            raise W2VError(f"{s}: no such file or directory")
    if transcripts is None and to_kaldi is None:
        raise click.UsageError("with TSV inputs, give --labels and/or --to-kaldi")
    lib.label_manifests(
        list(sources), transcripts=transcripts, dest=None if dest in (None, "-") else dest,
        dictionary=dictionary, upper=upper, speakers=speakers, to_kaldi=to_kaldi, jobs=jobs,
    )
