"""The ``w2v`` command: a click group whose subcommands load lazily.

Each subcommand lives in ``w2vtools/cli/<name>.py``, defines a click command
named ``command`` and has a line in :data:`COMMANDS`. Only click is imported here,
and subcommand modules import torch & co. inside their functions, so ``w2v --help``
stays instant.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading

import click

from w2vtools import __version__

# name -> one-line summary (shown by `w2v --help` without importing the module)
COMMANDS: dict[str, str] = {
    "manifest": "Index audio into fairseq TSV manifests, labels and Kaldi data dirs.",
    "featurize": "Turn a corpus into wav2vec (or fbank/MFCC) features: HDF5, Kaldi ark/scp.",
    "quantize": "Discrete units: vq-wav2vec / wav2vec 2.0 codes, or k-means on features.",
    "pretrain": "Self-supervised pretraining of wav2vec, vq-wav2vec and wav2vec 2.0.",
    "finetune": "CTC fine-tuning, or a CTC acoustic model on stored features.",
    "decode": "CTC decoding: viterbi, lexicon + KenLM beam search, lexicon-free.",
    "align": "CTC forced alignment of transcripts: word/letter CTM, segments, TextGrid.",
    "score": "WER/CER exactly as Kaldi's compute-wer prints it, with details.",
    "lm": "Build and evaluate KenLM n-gram LMs and lexicons.",
    "checkpoint": "Inspect and convert model checkpoints (ours, fairseq, Hugging Face).",
    "plot": "Plot training curves from a training log (JSONL) to PNG.",
    "doctor": "Check the installed stack (torch/torchaudio, KenLM, the lock) and say how to fix it.",
}

log = logging.getLogger("w2v")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"w2vtools.cli.{name}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Summaries come from COMMANDS so `w2v --help` imports no subcommand module.
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s" if verbose else "w2v: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="w2v")
@click.option("-v", "--verbose", count=True, help="Debug logs, and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """w2v: small composable tools for self-supervised speech recognition with
    wav2vec, vq-wav2vec and wav2vec 2.0.

    Each subcommand does one job, reads and writes plain files (or `-` for
    stdin/stdout), and logs to stderr.

    \b
    Example:
      w2v manifest corpus/ --dest data/ --ext flac --valid-percent 0.01
      w2v featurize data/train.tsv feats.h5 --model wav2vec2-base --layer 6
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line on stderr and a non-zero status on errors."""
    from w2vtools.errors import W2VError

    argv = sys.argv[1:] if argv is None else argv
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)
    prog = "w2v" + (f" {argv[0]}" if argv and argv[0] in COMMANDS else "")
    on_main_thread = threading.current_thread() is threading.main_thread()
    # only where the signal is handled as usual: a signal the caller ignores (nohup, `cmd &`) stays ignored
    previous = previous_int = None
    if on_main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    if on_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous_int = signal.signal(signal.SIGINT, _on_sigint)
    try:
        cli.main(args=argv, prog_name="w2v", standalone_mode=False)
    except (Terminated, click.exceptions.Abort) as e:
        # click turns a KeyboardInterrupt (ours included) into Abort
        if isinstance(e, Terminated) or isinstance(e.__cause__, Terminated):
            click.echo(f"{prog}: terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except W2VError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"{prog}: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # `w2v ... | head`: quietly stop, as Unix tools do.
        try:
            sys.stdout = open(os.devnull, "w")
        finally:
            sys.exit(141)
    except Exception as e:  # an unexpected failure: still one line unless -v
        if verbose:
            raise
        from w2vtools.stack import torchaudio_load_failure

        broken_stack = torchaudio_load_failure(e)
        if broken_stack:
            click.echo(f"{prog}: error: {broken_stack}", err=True)
            sys.exit(1)
        click.echo(f"{prog}: error: {type(e).__name__}: {e} (rerun with -v for a traceback)", err=True)
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler: unwinds like Ctrl-C, so outputs are cleaned up (exit 143)."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    """SIGTERM: stop the ``cmd |`` pipelines this process started, then unwind.

    Raising (rather than dying) lets every ``with`` block run: locks are released,
    temporary files removed, partial outputs kept for a resume. The training loop
    installs its own handler while it runs (stop after the update, save, exit 0).
    """
    _terminate_commands()
    raise Terminated()


def _on_sigint(signum, frame) -> None:  # noqa: ARG001
    """Ctrl-C: as Python's default (KeyboardInterrupt), after stopping the ``cmd |`` pipelines, which run
    in sessions of their own and so no longer get the terminal's SIGINT themselves."""
    _terminate_commands()
    raise KeyboardInterrupt()


def _terminate_commands() -> None:
    audio = sys.modules.get("w2vtools.audio")  # not imported: no command was started
    if audio is not None:
        audio.terminate_commands()
