"""``w2v lm``: build and evaluate KenLM n-gram models and lexicons."""

from __future__ import annotations

import click

EXAMPLE = """\b
Examples:
  # a pruned 4-gram (binary) and the lexicon of every word spellable with the dictionary
  w2v lm data/lm_text.txt --order 4 --prune '0 0 1' -o exp/lm.bin \\
      --dict data/dict.ltr.txt --lexicon exp/lexicon.txt
  # a 6-gram over letters for lexicon-free beam search
  w2v lm data/lm_text.txt --units letter --order 6 -o exp/letter6.bin --dict data/dict.ltr.txt
  # perplexity and OOV rate of held-out text
  w2v lm --eval data/test.txt --lm exp/lm.bin --dict data/dict.ltr.txt
"""


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
@click.option("--units", type=click.Choice(["word", "letter"]), default="word", show_default=True,
              help="word: a word LM (with --lexicon for `decode --decoder kenlm`); letter: an LM over the CTC tokens "
              "(H E L L O |) for the lexicon-free `decode --decoder beam --lm`.")
@click.option("--eval", "eval_text", metavar="TEXT", help="Evaluate --lm on this text instead of building.")
@click.option("--lm", "lm_path", type=click.Path(dir_okay=False), help="Model to evaluate (with --eval).")
def command(text, order, output, prune, dict_path, lexicon, lexicon_words, no_normalize, normalized_text, memory,
            discount_fallback, binary_type, units, eval_text, lm_path):
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

        click.echo(evaluate_lm(eval_text, lm_path, dict_path=dict_path, units=units).format())
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
        discount_fallback=discount_fallback, binary_type=binary_type, units=units,
    )
