"""``w2v decode``: CTC decoding into Kaldi text, n-best, trn and ctm."""

from __future__ import annotations

import click

from w2vtools.cli.runner_options import runner_options

EXAMPLE = """\b
Examples:
  # a CTC checkpoint over a test set, keeping its log-probabilities for LM sweeps
  w2v decode data/test.tsv --model exp/ctc/checkpoint_best.pt --dump-emissions exp/em.h5 -o exp/hyp.txt
  # lexicon + 4-gram beam search on the stored log-probabilities, then score
  w2v lm data/lm_text.txt --order 4 -o exp/lm.bin --dict data/dict.ltr.txt --lexicon exp/lexicon.txt
  w2v decode --emissions exp/em.h5 --decoder kenlm --lexicon exp/lexicon.txt --lm exp/lm.bin \\
      --lm-weight 2 --word-score -1 -o exp/hyp_lm.txt --ctm exp/hyp_lm.ctm
  w2v score data/test/text exp/hyp_lm.txt
  # LM weight and word score tuned on dev emissions, then used on test
  w2v decode --emissions exp/em_dev.h5 --decoder kenlm --lexicon exp/lexicon.txt --lm exp/lm.bin \\
      --tune lm_weight=0:4:0.5,word_score=-3:1:1 --ref data/dev/text -o exp/best.yaml
  w2v decode --emissions exp/em_test.h5 --config exp/best.yaml -o exp/hyp_test.txt
  # the 50 best of the 4-gram search reordered by a Transformer LM, its weight tuned on dev
  w2v lm data/lm_text.txt --neural --unit word -o exp/nlm --dict data/dict.ltr.txt
  w2v decode --emissions exp/em_dev.h5 --decoder kenlm --lexicon exp/lexicon.txt --lm exp/lm.bin --nbest 50 \\
      --rescore exp/nlm/checkpoint_best.pt --tune lm_weight=1:2:1,rescore_weight=0:2:0.5 --ref data/dev/text \\
      -o exp/best_rescore.yaml
  w2v decode --emissions exp/em_test.h5 --config exp/best_rescore.yaml -o exp/hyp_test_rescored.txt
"""


@click.command(
    "decode",
    short_help="CTC decoding: viterbi, lexicon + KenLM beam search, lexicon-free.",
    context_settings={"max_content_width": 100},
    epilog=EXAMPLE,
)
@click.argument("corpus", required=False, metavar="[CORPUS]")
@click.option("--model", help="CTC checkpoint (ours, fairseq .pt, Hugging Face folder, or a named model).")
@click.option("--features", help="Stored features for a downstream --model (w2v finetune --features), instead of CORPUS; "
              "ark:- or - streams them from stdin (w2v featurize DATA ark:- | w2v decode --features ark:- ...).")
@click.option(
    "--emissions",
    help="Stored CTC scores instead of a model: HDF5/ark/scp from --dump-emissions, or a .npy file or folder "
    "of (T, V) logits/log-probs.",
)
@click.option("--dict", "dict_path", type=click.Path(dir_okay=False), help="dict.ltr.txt giving the class order "
              "(needed for .npy emissions unless a dict.ltr.txt sits beside them).")
@click.option("-o", "--output", default="-", show_default=True, help="Kaldi text of 1-best hypotheses ('-' = stdout).")
@click.option("--decoder", type=click.Choice(["viterbi", "kenlm", "beam"]), default="viterbi", show_default=True,
              help="viterbi: greedy; kenlm: lexicon-constrained beam search with a word KenLM; "
              "beam: lexicon-free beam search (optional token-level --lm).")
@click.option("--lexicon", type=click.Path(dir_okay=False), help="Lexicon: 'WORD t1 t2 ... |' lines (w2v lm --lexicon).")
@click.option("--lm", type=click.Path(dir_okay=False), help="KenLM model, ARPA or binary.")
@click.option("--lm-weight", type=float, default=2.0, show_default=True)
@click.option("--word-score", type=float, default=-1.0, show_default=True, help="Score added per word.")
@click.option("--sil-score", type=float, default=0.0, show_default=True, help="Score added per word boundary token.")
@click.option("--unk-score", type=float, default=float("-inf"), show_default=True, help="Score of the unknown word.")
@click.option("--beam", type=int, default=50, show_default=True, help="Hypotheses kept per frame.")
@click.option("--beam-threshold", type=float, default=12.0, show_default=True,
              help="Prune hypotheses scoring this far below the best (25 or more: slower, more accurate).")
@click.option("--blank-skip", type=float, default=0.999, show_default=True,
              help="Beam search only the first frame of each run of frames whose blank probability is above this "
              "(1 = search every frame).")
@click.option("--beam-size-token", type=int, default=None, help="Tokens considered per frame (default: all).")
@click.option("--nbest", type=int, default=1, show_default=True, help="Also write the N best hypotheses with scores.")
@click.option("--rescore", type=click.Path(dir_okay=False),
              help="Transformer LM (w2v lm --neural) that reorders the --nbest list by acoustic + lm_weight * n-gram + "
              "rescore_weight * neural + word_score * words; the n-best file is written only with --nbest-out.")
@click.option("--rescore-weight", type=float, default=1.0, show_default=True,
              help="Weight of the Transformer LM's log10 probability (the scale of --lm-weight).")
@click.option("--nbest-out", help="N-best Kaldi text (keys uid-RANK; scores in FILE.scores) [default: OUTPUT.nbest].")
@click.option("--trn", type=click.Path(dir_okay=False), help="Also write the 1-best as sclite trn.")
@click.option("--ctm", type=click.Path(dir_okay=False), help="Also write word start and duration (s) as ctm.")
@click.option("--utt2spk", type=click.Path(dir_okay=False), help="Speakers for trn ids (speaker-uid).")
@click.option("--frame-shift", type=float, help="Seconds per frame for ctm [default: from the emissions, else 0.02].")
@click.option("--dump-emissions", help="With --model: store the log-probabilities (HDF5 or ark spec) for later decodes.")
@click.option("--shard", help="Decode only shard K of N (K/N), as featurize splits a corpus.")
@click.option("--device", default="cpu", show_default=True,
              help="Device for --model and the --rescore LM (cpu, cuda, cuda:1).")
@runner_options
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr [default: when a terminal].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Decoder settings from YAML (what --tune writes); options given on the command line win.")
@click.option("--tune", "tune_space", metavar="NAME=A:B:STEP,...",
              help="With --emissions and --ref: decode a grid of settings (e.g. lm_weight=0:4:0.25,word_score=-3:1:0.5; "
              "or a|b|c lists), print setting -> WER (stderr) and write the best as YAML to -o.")
@click.option("--ref", type=click.Path(dir_okay=False), help="Kaldi text references for --tune (a dev set, never test).")
@click.option("--trials", type=int, help="With --tune: a random search of this many grid points instead of the grid.")
@click.option("--jobs", type=int, default=2, show_default=True, help="With --tune: trials decoded in parallel processes.")
@click.pass_context
def command(ctx, corpus, model, features, emissions, dict_path, output, decoder, lexicon, lm, lm_weight, word_score,
            sil_score, unk_score, beam, beam_threshold, blank_skip, beam_size_token, nbest, rescore, rescore_weight,
            nbest_out, trn, ctm, utt2spk, frame_shift, dump_emissions, shard, device, int8, batch_seconds, chunk_seconds,
            chunk_overlap, progress, config_path, tune_space, ref, trials,
            jobs):
    """Decode CORPUS (TSV manifest, Kaldi data dir or wav.scp) with a CTC --model,
    or stored --emissions, into Kaldi `text` lines (`uid word word ...`).

    Scores are log-softmaxed first, so logits and log-probabilities both work.
    Class order is fairseq's: <s> (blank), <pad>, </s>, <unk>, then dict.ltr.txt;
    `|` separates words. Every lexicon token is checked against the model's
    tokens before decoding. A summary (utterances, audio seconds, search speed
    and real-time factor) goes to stderr.
    """
    import dataclasses

    from w2vtools.decode import DecoderOptions, decode
    from w2vtools.tune import read_config, tune_decoder

    opts = DecoderOptions(
        decoder=decoder, lexicon=lexicon, lm=lm, lm_weight=lm_weight, word_score=word_score, sil_score=sil_score,
        unk_score=unk_score, beam=beam, beam_threshold=beam_threshold, beam_size_token=beam_size_token, nbest=nbest,
        blank_skip=blank_skip, rescore=rescore, rescore_weight=rescore_weight,
    )
    if config_path:  # the file's settings, except where the command line names the option itself
        given = {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        opts = dataclasses.replace(opts, **{k: v for k, v in read_config(config_path).items() if k not in given})
    if tune_space:
        if not emissions or not ref or corpus or model or features:
            raise click.UsageError("--tune needs --emissions (stored: no model reruns) and --ref, and no CORPUS/--model")
        tune_decoder(emissions, ref, opts, tune_space, output=output, dict_path=dict_path, trials=trials, jobs=jobs,
                     device=device)
        return
    decode(
        corpus=corpus, model=model, emissions=emissions, dict_path=dict_path, output=output, options=opts,
        nbest_output=nbest_out, trn=trn, ctm=ctm, dump_emissions=dump_emissions, shard=shard,
        frame_shift=frame_shift, utt2spk=utt2spk, device=device, batch_seconds=batch_seconds, progress=progress,
        features=features, chunk_seconds=chunk_seconds, chunk_overlap=chunk_overlap, int8=int8,
    )
