"""Executable documentation: every command line of the README's tour and of each ``--help``
example section runs here, as written, on small real fixtures.

The lines are read from README.md ("A tour") and from the commands' help text, so a
changed example is tested as changed. Each section runs top to bottom in a fresh copy of
one workspace (:func:`docs_workspace`) laid out with the names the examples use:

* ``LibriSpeech/<part>``: real LJ Speech and FSDD clips in LibriSpeech's layout
  (:mod:`tests.librispeech_fixture`); ``lm_text.txt``: its LM text; ``fsdd/recordings``,
  ``fsdd/wav.scp``, ``corpus/``: a few FSDD recordings and LJ Speech clips;
* ``data/``: manifests, labels and Kaldi data dirs made from those (``train_10h``/``train_1h``
  are the training part, ``dev``/``dev_other`` dev-other, ``test`` dev-clean: test-clean has
  a Z, which the 16 training clips lack);
* ``exp/``: tiny checkpoints (random, with the data's dictionary), stored emissions and
  features (``em*.h5``, ``fb_*.h5``, ``feats/test.h5``), a short pretraining log;
* named models (``wav2vec2-base``, ``xlsr-53``, ``vq-wav2vec``) are tiny stand-ins put
  where the hub keeps them (``$W2V_HOME/models/<file>``), so the command runs unchanged;
  fairseq's ``wav2vec_small_960h.pt`` is fairseq's own tiny CTC fixture;
* ``copy-feats`` (Kaldi) is a stand-in on PATH that copies an ark with kaldiio.

Lines that cannot run here as written are listed in :data:`HOW` with the reason, per
line: shortened (training updates), skipped (8 GPUs, the 13-minute recipe); a skipped
line still has its options parsed by click (:func:`test_every_documented_command_parses`).
A documented example that fails is a failing test. The tour section is the README's
claim that the tour runs top to bottom in a fresh clone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import FIXTURES, REPO

README = REPO / "README.md"
FAIRSEQ = FIXTURES / "fairseq"


# ---------------------------------------------------------------------------------------------
# The documented lines


def _join_continuations(lines: list[str]) -> list[str]:
    """Shell lines with their ``\\`` continuations joined (one space where a break was)."""
    out, cur = [], ""
    for raw in lines:
        cur = f"{cur} {raw.strip()}" if cur else raw.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        out.append(cur)
        cur = ""
    return out


def _is_command(line: str) -> bool:
    return line.startswith(("w2v ", "torchrun "))


def readme_tour() -> list[str]:
    """The command lines of the README's "A tour" block, in order."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## A tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in _join_continuations(block.strip().splitlines()) if _is_command(line)]


def help_examples() -> dict[str, list[str]]:
    """Each command's example lines (the "Example(s):" section of its --help), keyed by its name."""
    from w2vtools.cli import COMMANDS, cli

    found: dict[str, list[str]] = {}

    def walk(cmd: click.Command, path: str, parent: click.Context | None) -> None:
        ctx = click.Context(cmd, info_name=path.split()[-1], parent=parent)
        help_text = cmd.get_help(ctx)
        lines: list[str] = []
        for section in re.split(r"\n\s*Examples?:\n", help_text)[1:]:
            body = section.split("\n\n", 1)[0].splitlines()
            # `$ w2v ...` lines are followed by what they print
            lines += [line.removeprefix("$ ") for line in _join_continuations(body)
                      if _is_command(line.removeprefix("$ "))]
        if lines:
            found[path] = lines
        if isinstance(cmd, click.Group) and parent is not None:
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}", ctx)

    root = click.Context(cli, info_name="w2v")
    walk(cli, "w2v", None)
    for name in COMMANDS:
        walk(cli.get_command(root, name), f"w2v {name}", root)
    return found


def sections() -> dict[str, list[str]]:
    """README tour first, then every help section."""
    return {"README tour": readme_tour(), **help_examples()}


# ---------------------------------------------------------------------------------------------
# How lines that cannot run as written run (every other line runs exactly as written)


@dataclasses.dataclass(frozen=True)
class How:
    why: str
    run: str | None = None  # what runs instead; None with skip=True: nothing runs
    skip: bool = False


_SHORT = "shortened to a few updates (and warm-up steps): the preset's full run takes minutes to days"
_SMALL = (_SHORT + ", with 10 s batches: the stand-in corpus is 90 s, less than one batch of the preset's "
          "(3.2 M samples)")
_GPUS = "needs 8 GPUs and the BASE preset; its options are parsed here"
_TINY_VALID = ("the stand-in train-clean-100 has 16 files, and 1 % of 16 is none (an empty valid.tsv, which "
               "pretrain refuses): 25 % here")
_PRETRAIN = "--max-update 4 --valid-interval 2 --set optim.warmup_updates=1 --threads 1"
_FINETUNE = "--max-update 2 --valid-interval 2 --set data.max_samples_per_batch=160000 --threads 1"
_DOWNSTREAM = "--max-update 10 --valid-interval 10 --threads 1"
_NEURAL_LM = "--max-update 4 --valid-interval 2 --set optim.warmup_updates=1 --threads 1"


def _uncommented(line: str) -> str:
    return line.split("  #", 1)[0].rstrip()


def _plus(line: str, options: str, why: str) -> tuple[str, How]:
    """``line`` runs as written with ``options`` added (given last, they win over the preset's)."""
    return line, How(why, run=f"{_uncommented(line)} {options}")


HOW: dict[str, How] = dict([
    ("w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.01 --labels "
     "LibriSpeech/train-clean-100                 # train/valid .tsv .wrd .ltr, dict.ltr.txt",
     How(_TINY_VALID, run="w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.25 "
         "--labels LibriSpeech/train-clean-100")),
    ("w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.01 --labels "
     "LibriSpeech/train-clean-100",
     How(_TINY_VALID, run="w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.25 "
         "--labels LibriSpeech/train-clean-100")),
    ("torchrun --nproc_per_node=8 -m w2vtools pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 "
     "--preset base --update-freq 8 --save-dir exp/pt_base   # 8 GPUs standing in for 64", How(_GPUS, skip=True)),
    ("torchrun --nproc_per_node=8 -m w2vtools pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 "
     "--preset base --update-freq 8 --save-dir exp/base", How(_GPUS, skip=True)),
    ("w2v doctor && bash recipes/digits/run.sh",
     How("the digits recipe takes over an hour on 2 cores (tests/test_recipe_digits.py runs it with --quick); `w2v doctor` runs "
         "alone", run="w2v doctor")),
    ("w2v featurize data/train feats.JOB.h5 --model xlsr-53 --shard JOB/8   # JOB=1..8",
     How("JOB is the job runner's placeholder (run_local.sh JOB=1:8 ...); jobs 1 and 2 run, which the next "
         "line merges", run="for JOB in 1 2; do w2v featurize data/train feats.$JOB.h5 --model xlsr-53 "
         "--shard $JOB/8; done")),
    _plus("w2v pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 --preset tiny --save-dir exp/pt",
          _PRETRAIN, _SHORT),
    _plus("w2v pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 --preset tiny --save-dir exp/tiny "
          "--set optim.max_update=300", _PRETRAIN, _SHORT),
    _plus("w2v pretrain data/train.tsv --arch wav2vec2 --preset tiny --save-dir exp/pt_aug "
          "--set 'data.speed_perturb=[0.9,1.0,1.1]' --set 'data.noise_snr_db=[10,30]'   # augmented training audio",
          _PRETRAIN.replace(" --valid-interval 2", ""), _SHORT),
    _plus("w2v pretrain units_train.txt --valid units_valid.txt --arch unit-bert --preset tiny --save-dir exp/bert",
          _PRETRAIN, _SHORT),
    _plus("w2v finetune data/train_10h.tsv --labels ltr --valid data/dev_other.tsv --init exp/pt/checkpoint_best.pt "
          "--preset 10h --save-dir exp/ft_10h", _FINETUNE, _SMALL),
    _plus("w2v finetune data/train_10h.tsv --labels ltr --valid data/dev_other.tsv "
          "--init exp/pretrain/checkpoint_best.pt --preset 10h --save-dir exp/ft10h", _FINETUNE, _SMALL),
    _plus("w2v finetune data/train_1h.tsv --valid data/dev.tsv --init wav2vec2-base --preset 1h --update-freq 8 "
          "--save-dir exp/ft1h            # 1 GPU standing in for 8", _FINETUNE + " --stop-at-update 1",
          _SMALL + "; it stops at update 1 here, so that the next line has a run to resume"),
    _plus("w2v finetune data/train_1h.tsv --valid data/dev.tsv --preset 1h --update-freq 8 --save-dir exp/ft1h "
          "--resume                   # after an interruption", _FINETUNE,
          _SMALL + " (the same settings as the run it resumes)"),
    _plus("w2v finetune --features fb_train.h5 --labels data/kaldi/train/text --valid-features fb_test.h5 "
          "--valid-labels data/kaldi/test/text --arch blstm --preset tiny --save-dir exp/blstm  # on stored features",
          _DOWNSTREAM, _SHORT),
    _plus("w2v finetune --features feats/train.h5 --labels data/text --valid-features feats/test.h5 "
          "--valid-labels data/text --arch blstm --preset tiny --save-dir exp/blstm", _DOWNSTREAM, _SHORT),
    _plus("w2v lm data/lm_text.txt --neural --unit word --preset tiny -o exp/nlm --dict data/dict.ltr.txt",
          _NEURAL_LM, _SHORT),
    _plus("w2v lm data/lm_text.txt --neural --unit word -o exp/nlm --dict data/dict.ltr.txt", _NEURAL_LM, _SHORT),
])


def how(line: str) -> How | None:
    return HOW.get(line)


# ---------------------------------------------------------------------------------------------
# Parsing every line with click (no data needed)


def _w2v_argvs(line: str) -> list[list[str]]:
    """The argument lists of each w2v (or torchrun -m w2vtools) command in a shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    tokens = list(lexer)
    argvs, cur = [], []
    for tok in tokens + ["|"]:
        if tok in ("|", "&&", "||", ";", ">", "<", ">>"):
            if cur:
                argvs.append(cur)
            cur = [] if tok not in (">", "<", ">>") else ["<redirect>"]
            continue
        cur.append(tok)
    out = []
    for argv in argvs:
        if argv[0] == "w2v":
            out.append(argv[1:])
        elif argv[0] == "torchrun":
            out.append(argv[argv.index("w2vtools") + 1:])
    return out


def _parse(argv: list[str]) -> None:
    """Let click parse ``w2v ARGV`` down to the leaf command, without running it."""
    from w2vtools.cli import cli

    cmd: click.Command = cli
    ctx = cli.make_context("w2v", list(argv))
    while isinstance(cmd, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        cmd = sub
        ctx = sub.make_context(name, rest, parent=ctx)


def all_lines() -> list[tuple[str, str]]:
    return [(name, line) for name, lines in sections().items() for line in lines]


def test_the_documented_commands_are_found():
    found = sections()
    assert len(found["README tour"]) >= 20
    for name in ("w2v manifest", "w2v featurize", "w2v quantize", "w2v pretrain", "w2v finetune", "w2v decode",
                 "w2v align", "w2v score", "w2v lm", "w2v checkpoint", "w2v plot", "w2v doctor"):
        assert found.get(name), f"{name} --help has no example section"


def test_every_exception_is_still_documented():
    """An entry of HOW whose line left the docs is stale: the table says why each line differs."""
    documented = {line for _, line in all_lines()}
    assert not set(HOW) - documented, "HOW names lines the docs no longer have"


@pytest.mark.parametrize("section,line", all_lines(), ids=lambda v: v[:70])
def test_every_documented_command_parses(section, line, tmp_path, monkeypatch):
    """click accepts every documented line's options, skipped lines included."""
    monkeypatch.chdir(tmp_path)
    argvs = _w2v_argvs(line)
    assert argvs, line
    for argv in argvs:
        try:
            _parse(argv)
        except click.exceptions.Exit:
            pass


# ---------------------------------------------------------------------------------------------
# The workspace the examples run in

DICT_FOR_FAIRSEQ = "dict.ltr.txt"

COPY_FEATS = f"""#!{sys.executable}
# Kaldi's copy-feats RSPECIFIER WSPECIFIER, for the tests: the same archive, via kaldiio.
import sys, kaldiio
src, dst = sys.argv[1], sys.argv[2]
reader = kaldiio.load_ark(sys.stdin.buffer) if src == "ark:-" else kaldiio.ReadHelper(src)
with kaldiio.WriteHelper(dst) as w:
    for key, mat in reader:
        w(key, mat)
"""


def _env(ws: Path) -> dict[str, str]:
    return dict(
        os.environ, W2V_PYTHON=sys.executable, W2V_HOME=str(ws / ".hub"), OMP_NUM_THREADS="1",
        PATH=os.pathsep.join([str(ws / ".bin"), str(REPO / "bin"), str(REPO / "tools" / "bin"), os.environ["PATH"]]),
    )


def _sh(script: str, ws: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -o pipefail\n" + script], cwd=ws, env=_env(ws), capture_output=True,
                          text=True)


def _must(script: str, ws: Path) -> None:
    proc = _sh(script, ws)
    if proc.returncode:
        raise AssertionError(f"building the workspace: {script} exited {proc.returncode}:\n{proc.stderr[-3000:]}")


def _tiny_models(ws: Path) -> None:
    """Random tiny checkpoints: pretrained wav2vec 2.0 (12 layers, for --layer 6), CTC with data's letters."""
    import torch

    from w2vtools.formats.labels import ctc_vocabulary, read_dictionary
    from w2vtools.models.checkpoint import LoadedModel, save_model
    from w2vtools.models.ctc import CTCModel
    from w2vtools.models.presets import get_preset
    from w2vtools.models.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("wav2vec2", "tiny"), encoder_layers=12)
    encoder = Wav2Vec2Model(cfg).eval()
    hub = ws / ".hub" / "models"
    hub.mkdir(parents=True)
    for name in ("wav2vec_small.pt", "xlsr_53_56k.pt"):  # wav2vec2-base, xlsr-53
        save_model(hub / name, LoadedModel("wav2vec2", "pretrain", encoder, cfg))
    shutil.copy(FAIRSEQ / "vq_wav2vec_gumbel_dictconfig_fp16.pt", hub / "vq-wav2vec.pt")
    save_model(ws / "exp" / "pretrain" / "checkpoint_best.pt", LoadedModel("wav2vec2", "pretrain", encoder, cfg))
    vocab = ctc_vocabulary(read_dictionary(ws / "data" / "dict.ltr.txt"))
    ctc = CTCModel(Wav2Vec2Model(get_preset("wav2vec2", "tiny")), len(vocab)).eval()
    for name in ("ctc", "ft", "finetune"):
        save_model(ws / "exp" / name / "checkpoint_best.pt", LoadedModel("wav2vec2", "ctc", ctc, ctc.config, vocab))
    # a unit BERT on every code of the vq-wav2vec stand-in (2 groups of 40), for `featurize --bert`
    from w2vtools.formats.units import unit_vocabulary
    from w2vtools.models.token_transformer import TokenTransformer
    from w2vtools.models.unit_bert import unit_bert_preset

    units = unit_vocabulary([f"{a}-{b}" for a in range(40) for b in range(40)])
    bert_cfg = unit_bert_preset("tiny", len(units))
    save_model(ws / "exp" / "bert" / "checkpoint_best.pt",
               LoadedModel("unit-bert", "pretrain", TokenTransformer(bert_cfg).eval(), bert_cfg, units))
    # fairseq's own tiny CTC model for `checkpoint convert wav2vec_small_960h.pt`, its dictionary beside it
    shutil.copy(FAIRSEQ / "wav2vec2_ctc_cfg.pt", ws / "wav2vec_small_960h.pt")
    shutil.copy(FAIRSEQ / "dict.ltr.txt", ws / DICT_FOR_FAIRSEQ)


@pytest.fixture(scope="session")
def docs_workspace(shared_data, kenlm_tools, tmp_path_factory) -> Path:
    """Every file the documented examples name, built once from the shared data (about a minute)."""
    from tests.librispeech_fixture import build_librispeech_fixture

    ws = build_librispeech_fixture(shared_data, tmp_path_factory.mktemp("docs"))
    shutil.copy(ws / "lm" / "librispeech-lm-norm.txt", ws / "lm_text.txt")
    (ws / ".bin").mkdir()
    (ws / ".bin" / "copy-feats").write_text(COPY_FEATS)
    (ws / ".bin" / "copy-feats").chmod(0o755)
    rec = ws / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    corpus = ws / "corpus"
    corpus.mkdir()
    fsdd = shared_data / "fsdd" / "recordings"
    for speaker in ("jackson", "theo"):
        for digit in range(10):
            for take in (0, 5):
                (rec / f"{digit}_{speaker}_{take}.wav").symlink_to(fsdd / f"{digit}_{speaker}_{take}.wav")
    (ws / "fsdd" / "wav.scp").write_text("".join(f"{p.stem} {p}\n" for p in sorted(rec.iterdir())))
    for p in sorted(rec.iterdir())[:3]:
        (corpus / p.name).symlink_to(p.resolve())
    for p in sorted((ws / "LibriSpeech" / "test-clean").rglob("*.flac"))[:3]:
        shutil.copy(p, corpus / p.name)
    (ws / "exp").mkdir()
    _must(
        """
        w2v manifest LibriSpeech/train-clean-100 --dest data --ext flac --valid-percent 0.25 \
            --labels LibriSpeech/train-clean-100
        for part in dev-clean:test dev-other:dev_other; do  # letters all in the train dictionary (test-clean has Z)
            w2v manifest LibriSpeech/${part%%:*} --dest data --name ${part##*:} --ext flac --valid-percent 0 \
                --labels LibriSpeech/${part%%:*} --dict data/dict.ltr.txt
        done
        for ext in tsv wrd ltr; do
            cp data/train.$ext data/train_10h.$ext; cp data/train.$ext data/train_1h.$ext
            cp data/dev_other.$ext data/dev.$ext
        done
        w2v manifest data/train.tsv --to-kaldi data/kaldi/train
        w2v manifest data/test.tsv --to-kaldi data/kaldi/test
        w2v manifest data/dev_other.tsv --to-kaldi data/kaldi/dev
        cp -r data/kaldi/train data/train
        mkdir -p data/test data/dev && cp data/kaldi/test/text data/test/text && cp data/kaldi/dev/text data/dev/text
        cat data/kaldi/train/text data/kaldi/test/text data/kaldi/dev/text | sort > data/text
        cp lm_text.txt data/lm_text.txt
        cut -d' ' -f2- data/kaldi/test/text > data/test.txt
        """, ws)
    _tiny_models(ws)
    _must(
        """
        w2v featurize data/kaldi/train fb_train.h5 --model fbank --no-progress
        w2v featurize data/kaldi/test fb_test.h5 --model fbank --no-progress
        mkdir -p feats && cp fb_test.h5 feats/test.h5
        w2v decode data/test.tsv --model exp/ctc/checkpoint_best.pt --dump-emissions exp/em.h5 -o /dev/null
        cp exp/em.h5 exp/em_test.h5 && cp exp/em.h5 em.h5
        w2v decode data/dev_other.tsv --model exp/ctc/checkpoint_best.pt --dump-emissions exp/em_dev.h5 -o /dev/null
        cp exp/em_dev.h5 em_dev.h5
        mkdir -p exp/decode && cp data/test/text exp/decode/hyp.txt
        w2v checkpoint convert wav2vec_small_960h.pt facebook-wav2vec2-base-960h/ --to huggingface
        w2v pretrain data/train.tsv --valid data/valid.tsv --arch wav2vec2 --preset tiny --save-dir exp/tiny \
            --max-update 4 --valid-interval 2 --set optim.warmup_updates=1 --threads 1 > /dev/null
        mv exp/tiny exp/a && cp -r exp/a exp/b
        """, ws)
    return ws


# ---------------------------------------------------------------------------------------------
# Running the sections


# what a section's examples take from an example of another section
PREPARE = {"w2v plot": "cp -r exp/a exp/tiny  # what `w2v pretrain --help`'s example writes",
           "w2v align": "cp -r data/kaldi/test data/chapters  # the long recordings of `align --segment`"}


def run_section(name: str, ws: Path, tmp_path: Path) -> None:
    """Copy the workspace, then run the section's lines top to bottom; the first failure fails."""
    here = tmp_path / "ws"
    shutil.copytree(ws, here, symlinks=True)
    if name in PREPARE:
        _must(PREPARE[name], here)
    for line in sections()[name]:
        rule = how(line)
        if rule and rule.skip:
            print(f"skipped: {line}\n  why: {rule.why}")
            continue
        script = rule.run if rule and rule.run else line
        if rule:
            print(f"instead of: {line}\n  runs: {script}\n  why: {rule.why}")
        proc = _sh(script, here)
        assert proc.returncode == 0, f"{name}: `{line}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_readme_tour_runs_top_to_bottom(docs_workspace, tmp_path):
    """The README's tour, every line in order, in a fresh copy of the workspace."""
    run_section("README tour", docs_workspace, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(help_examples()))
def test_help_examples_run(name, docs_workspace, tmp_path):
    run_section(name, docs_workspace, tmp_path)
