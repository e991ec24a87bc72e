"""``w2v lm``: build and evaluate KenLM n-gram models and lexicons."""

from __future__ import annotations

import click

from w2vtools.cli.training_options import SETTINGS, settings_as_sets

EXAMPLE = """\b
Examples:
  # a pruned 4-gram (binary) and the lexicon of every word spellable with the dictionary
  w2v lm data/lm_text.txt --order 4 --prune '0 0 1' -o exp/lm.bin \\
      --dict data/dict.ltr.txt --lexicon exp/lexicon.txt
  # a 6-gram over letters for lexicon-free beam search
  w2v lm data/lm_text.txt --units letter --order 6 -o exp/letter6.bin --dict data/dict.ltr.txt
  # perplexity and OOV rate of held-out text
  w2v lm --eval data/test.txt --lm exp/lm.bin --dict data/dict.ltr.txt
  # a Transformer LM over words (5% of the text held out for its perplexity), then a 4-gram on the
  # same training part, evaluated on the same held-out part
  w2v lm data/lm_text.txt --neural --unit word --preset tiny -o exp/nlm --dict data/dict.ltr.txt
  w2v lm exp/nlm/train.txt --order 4 -o exp/lm4.arpa --no-normalize
  w2v lm --eval exp/nlm/valid.txt --lm exp/lm4.arpa
  w2v lm --eval exp/nlm/valid.txt --lm exp/nlm/checkpoint_best.pt
"""


def _training_settings(command):
    """The training options every trained model shares (--max-update, --lr, --seed, ...)."""
    for option, kind, _, text in reversed(SETTINGS):
        command = click.option(option, type=kind, default=None, help=f"With --neural: {text}")(command)
    return command


@click.command(
    "lm",
    short_help="Build and evaluate KenLM n-gram LMs and lexicons.",
    context_settings={"max_content_width": 100},
    epilog=EXAMPLE,
)
@click.argument("text", required=False, metavar="[TEXT]")
@click.option("--order", type=int, default=4, show_default=True, help="n-gram order.")
@click.option("-o", "--output", help="Model to write: *.arpa (text) or anything else (KenLM binary).")
@click.option("--prune", type=str, multiple=True, help="lmplz count thresholds per order, e.g. --prune 0 --prune 0 --prune 1; "
              "or one quoted list: --prune '0 0 1'.", metavar="N")
@click.option("--dict", "dict_path", type=click.Path(dir_okay=False),
              help="dict.ltr.txt: text is normalized to its alphabet; needed for --lexicon.")
@click.option("--lexicon", type=click.Path(dir_okay=False), help="Write 'WORD W O R D |' for every spellable word.")
@click.option("--lexicon-words", type=click.Path(dir_okay=False), multiple=True,
              help="More text whose words join the lexicon but not the LM (they get the LM's <unk> score).")
@click.option("--no-normalize", is_flag=True, help="Use the text as it is (only whitespace is collapsed).")
@click.option("--normalized-text", type=click.Path(dir_okay=False), help="Also save the normalized training text.")
@click.option("--memory", default="10%", show_default=True, help="lmplz/build_binary memory (-S): 10%, 2G, ...")
@click.option("--discount-fallback", is_flag=True, help="Let lmplz use fallback discounts on tiny texts.")
@click.option("--binary-type", type=click.Choice(["probing", "trie"]), default="probing", show_default=True)
@click.option("--units", "--unit", "units", type=click.Choice(["word", "letter", "char"]), default="word",
              show_default=True,
              help="word: a word LM (with --lexicon for `decode --decoder kenlm`); letter (or char): an LM over the CTC "
              "tokens (H E L L O |) for the lexicon-free `decode --decoder beam --lm`, or a character Transformer LM.")
@click.option("--eval", "eval_text", metavar="TEXT", help="Evaluate --lm on this text instead of building.")
@click.option("--lm", "lm_path", type=click.Path(dir_okay=False),
              help="Model to evaluate (with --eval): KenLM ARPA/binary, or a --neural checkpoint.")
@click.option("--neural", is_flag=True, help="Train a Transformer LM (the one trainer) instead; -o is its run directory "
              "(checkpoint_best.pt, config.yaml, log.jsonl, train.txt, valid.txt).")
@click.option("--preset", type=click.Choice(["tiny", "base"]), default="tiny", show_default=True,
              help="With --neural: model and recipe size (tiny: minutes on a CPU; base: RoBERTa BASE, fairseq's "
              "transformer_lm recipe, for GPUs).")
@click.option("--valid", "valid_text", metavar="TEXT", help="With --neural: held-out text [default: --valid-percent of TEXT].")
@click.option("--valid-percent", type=float, default=5.0, show_default=True,
              help="With --neural and no --valid: hold out this percentage of TEXT's sentences (seeded by --seed).")
@click.option("--min-count", type=int, default=None,
              help="With --neural: rarer units become <unk> [default: 2 for words, 1 for characters].")
@click.option("--max-vocab", type=int, default=0, show_default=True, help="With --neural: at most this many units (0: all).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="With --neural: YAML with sections model/data/optim/run, applied over the preset.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="With --neural: override one setting (repeatable), e.g. --set model.layers=4.")
@_training_settings
@click.option("--resume", is_flag=True, help="With --neural: continue exactly from OUTPUT/checkpoint_last.pt.")
@click.option("--device", default=None, help="With --neural: cpu or cuda (default: cuda when available).")
def command(text, order, output, prune, dict_path, lexicon, lexicon_words, no_normalize, normalized_text, memory,
            discount_fallback, binary_type, units, eval_text, lm_path, neural, preset, valid_text, valid_percent,
            min_count, max_vocab, config_file, sets, resume, device, **settings):
    """Build an n-gram LM from TEXT (one sentence a line, `-` = stdin) with KenLM's
    lmplz and build_binary, normalizing it to the --dict alphabet first (case,
    punctuation; words with digits or foreign characters are kept as they are
    and reported). Or, with --eval, print perplexity and OOV rate.

    The KenLM tools are looked up in $KENLM_BIN, PATH and <repo>/tools/bin;
    tools/install_kenlm.sh builds them.
    """
    from w2vtools.errors import W2VError

    if eval_text is not None:
        if text is not None or output is not None:
            raise W2VError("--eval evaluates an existing --lm: drop TEXT and -o")
        if lm_path is None:
            raise W2VError("--eval needs --lm MODEL")
        from w2vtools.lm import evaluate_lm
        from w2vtools.neural_lm import evaluate_text, is_neural_lm

        if is_neural_lm(lm_path):
            click.echo(evaluate_text(eval_text, lm_path, dict_path=dict_path, device=device or "cpu").format())
        else:
            click.echo(evaluate_lm(eval_text, lm_path, dict_path=dict_path,
                                   units="letter" if units == "char" else units).format())
        return
    if neural:
        _train_neural(text, output, units, dict_path, no_normalize, preset, valid_text, valid_percent, min_count,
                      max_vocab, config_file, settings_as_sets(sets, settings), resume, device)
        return
    if text is None or output is None:
        raise W2VError("give TEXT and -o MODEL to build an LM (or --eval TEXT --lm MODEL)")
    if lm_path is not None:
        raise W2VError("--lm names the model to evaluate (with --eval); the model to build is -o")
    try:
        prune_counts = [int(x) for p in prune for x in str(p).replace(",", " ").split()]
    except ValueError:
        raise W2VError(f"--prune {' '.join(prune)}: expected whole numbers, e.g. --prune '0 0 1'") from None
    from w2vtools.lm import build_lm

    build_lm(
        text, output, order=order, dict_path=dict_path, lexicon=lexicon, extra_words=lexicon_words,
        prune=prune_counts, normalize=not no_normalize, normalized_output=normalized_text, memory=memory,
        discount_fallback=discount_fallback, binary_type=binary_type, units="letter" if units == "char" else units,
    )


def _train_neural(text, output, units, dict_path, no_normalize, preset, valid_text, valid_percent, min_count,
                  max_vocab, config_file, sets, resume, device):
    from w2vtools.errors import W2VError
    from w2vtools.neural_lm import train_neural_lm

    if text is None or output is None:
        raise W2VError("--neural needs TEXT and -o RUN_DIR")
    summary = train_neural_lm(
        text, output, unit="word" if units == "word" else "char", preset=preset, valid=valid_text,
        valid_fraction=valid_percent / 100.0, dict_path=dict_path, normalize=not no_normalize, min_count=min_count,
        max_vocab=max_vocab, config_file=config_file, sets=sets, resume=resume, device=device,
    )
    if "valid" in summary:
        click.echo(summary["valid"].format())
