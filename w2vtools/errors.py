"""The one exception type that reaches the user as a single line on stderr."""


class W2VError(Exception):
    """A user-facing error: bad input, missing file, impossible request.

    The CLI prints ``w2v <command>: error: <message>`` and exits with status 1
    (no traceback unless ``-v``). The message should name the file and the reason,
    e.g. ``W2VError(f"{path}: truncated WAV (header says 16000 frames, file has 812)")``.
    """

    exit_code = 1


class PartialFailure(W2VError):
    """The command wrote its output but some inputs were left out (exit status 3).

    3, not 2: click exits 2 on usage errors, and a script must be able to tell "bad
    command line, nothing done" from "output written, some inputs named on stderr".
    """

    exit_code = 3
