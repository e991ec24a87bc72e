# shellcheck shell=bash
# Environment of every recipe: the checkout's bin/ (the w2v command, runnable
# without installing), KenLM's tools (tools/bin, built by tools/install_kenlm.sh)
# and the shared recipe utilities on PATH. Sourced by each recipe's path.sh,
# from the recipe dir.

# -P: the recipe's utils/ is a link to this folder; the checkout is two levels above it.
W2V_ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && cd ../.. && pwd)
export W2V_ROOT
export PATH="$W2V_ROOT/bin:$W2V_ROOT/tools/bin:$PWD/utils:$PATH"
# local/*.py import w2vtools from this checkout, installed or not (as bin/w2v does).
export PYTHONPATH="$W2V_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# bin/w2v runs $W2V_PYTHON (default python3). Outside an activated venv, use
# the checkout's .venv (made by `make setup`) when there is one.
if [ -z "${W2V_PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$W2V_ROOT/.venv/bin/python" ]; then
  export W2V_PYTHON="$W2V_ROOT/.venv/bin/python"
fi
export W2V_PYTHON="${W2V_PYTHON:-python3}"  # also runs the recipe's local/*.py
if ! "$W2V_PYTHON" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("torch", "soundfile", "click")))' 2>/dev/null; then
  echo "path.sh: $W2V_PYTHON cannot run w2v (torch/soundfile/click missing): activate the project's venv" \
    "(make setup; . .venv/bin/activate) or set W2V_PYTHON to its python" >&2
  return 1
fi
export LC_ALL=C            # Kaldi tables are sorted in C order
export PYTHONUNBUFFERED=1  # logs appear as they are written
