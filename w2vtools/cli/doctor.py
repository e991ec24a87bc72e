"""``w2v doctor``: the installed stack, checked piece by piece, with the fix for what is broken."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def command():
    """Check the installed stack: versions, devices, KenLM tools, and the lock.

    Each piece is tried for real: torchaudio's fbank, Resample and forced_align
    on a few samples, flashlight's ctc_decoder, KenLM's binaries on PATH or in
    tools/bin, and every distribution pinned in requirements.lock against what
    is installed. Prints one line per piece on stdout; each broken one also
    gets one line on stderr with the command that fixes it. Exit status 1 when
    something w2v needs is broken or missing (sclite is optional).

    \b
    Example:
      w2v doctor
      w2v doctor && bash recipes/digits/run.sh
    """
    from w2vtools.errors import W2VError
    from w2vtools.stack import check_stack

    checks = check_stack()
    width = max(len(c.name) for c in checks)
    for c in checks:
        status = "ok" if c.ok else ("MISSING" if c.required else "warn")
        click.echo(f"{status:>7}  {c.name:<{width}}  {c.found}" + (f"  [fix: {c.fix}]" if not c.ok and c.fix else ""))
    broken = [c for c in checks if not c.ok and c.required]
    for c in broken[:-1]:
        click.echo(f"w2v doctor: error: {c.name}: {c.found}: {c.fix}", err=True)
    if broken:
        last = broken[-1]
        raise W2VError(f"{last.name}: {last.found}: {last.fix}")
