"""Messages a new user follows: resume hints that run as written, durations in a readable unit."""

from __future__ import annotations

import shlex

from w2vtools.formats.durations import format_duration
from w2vtools.train.checkpoints import resume_hint


def test_resume_hint_is_the_command_line_plus_resume():
    argv = ["-v", "finetune", "--features", "fbank train.h5", "--labels", "text", "--arch", "blstm",
            "--save-dir", "exp/blstm"]
    hint = resume_hint("exp/blstm", argv)
    assert hint == "run: w2v -v finetune --features 'fbank train.h5' --labels text --arch blstm " \
                   "--save-dir exp/blstm --resume"
    # --resume is a flag: the hinted command line parses, with the run's options and resume on
    from w2vtools.cli import cli

    words = shlex.split(hint.removeprefix("run: "))[1:]
    ctx = cli.make_context("w2v", words, resilient_parsing=True)
    sub = cli.get_command(ctx, "finetune")
    sub_ctx = sub.make_context("finetune", words[2:])
    assert sub_ctx.params["resume"] is True and sub_ctx.params["save_dir"] == "exp/blstm"
    # already resumed once: --resume is not repeated
    assert resume_hint("exp", ["pretrain", "a.tsv", "--resume"]) == "run: w2v pretrain a.tsv --resume"
    # a library call has no command line to repeat
    assert "exp/x/checkpoint_last.pt" in resume_hint("exp/x", ["some", "script"])


def test_durations_in_a_human_unit():
    assert format_duration(3.2) == "3.2 s"
    assert format_duration(0.0) == "0 s"
    assert format_duration(90 * 60) == "90.0 min"
    assert format_duration(360000) == "100 h"


def test_labels_outside_the_dictionary_warn_with_counts_and_matching_ones_do_not(caplog):
    import logging

    from w2vtools.finetune import encode_labels

    tokens = ["<s>", "<pad>", "</s>", "<unk>", "|", "O", "N", "E"]
    with caplog.at_level(logging.WARNING, logger="w2v.finetune"):
        encode_labels({"a": "O N E |", "b": "N O N E |"}, tokens, name="train")
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="w2v.finetune"):
        encode_labels({"a": "O N E |", "b": "T W O |"}, tokens, name="valid")
    assert "valid: 2 symbol occurrences outside the dictionary, mapped to <unk>: 'T' x1 (e.g. b)" in caplog.text


def test_resume_given_a_checkpoint_path_says_resume_takes_no_value(tmp_path, w2v):
    """The old hint's form, `--resume exp/x/checkpoint_last.pt`: a usage error, not a UnicodeDecodeError."""
    import torch

    ckpt = tmp_path / "checkpoint_last.pt"
    torch.save({"weights": torch.zeros(3)}, ckpt)
    for args in (["finetune", "--features", "f.h5", "--save-dir", tmp_path, "--resume", ckpt],
                 ["pretrain", "--arch", "wav2vec2", "--preset", "tiny", "--save-dir", tmp_path, "--resume", ckpt]):
        proc = w2v(*args, check=False)
        assert proc.returncode == 2 and "UnicodeDecodeError" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"Error: --resume takes no value: it continues from SAVE_DIR/checkpoint_last.pt; drop '{ckpt}' "
            "and give the run's own TRAIN and --save-dir")
    # a checkpoint where a corpus list goes: one line naming the file and what was expected
    proc = w2v("pretrain", ckpt, "--arch", "wav2vec2", "--preset", "tiny", "--save-dir", tmp_path / "x", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"w2v pretrain: error: {ckpt}: not a text file; expected a TSV manifest, Kaldi data dir or wav.scp")
