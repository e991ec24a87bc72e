#!/usr/bin/env bash
# Install w2v into a virtual environment, idempotently:
#   the locked environment (requirements.lock) and the package itself, the test peers (transformers, jiwer, pyctcdecode),
#   KenLM's lmplz/build_binary (tools/install_kenlm.sh) and, when root, Debian's sctk (sclite).
# Usage: bash tools/setup.sh [VENV_DIR]   (default: .venv in the repository)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${W2V_VENV:-$repo/.venv}}"
python="${W2V_PYTHON_FOR_VENV:-$(command -v python3.11 || command -v python3)}"

log() { echo "[$(date +%H:%M:%S)] setup: $*" >&2; }

if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: need Python 3.11, $python is $("$python" --version 2>&1)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
# The environment is the lock (requirements.lock: every distribution at its exact tested version,
# made by tools/lock.sh), then w2vtools itself without dependency resolution. Reinstalled when the
# lock or pyproject.toml is newer than the last install.
lock="${W2V_LOCK:-$repo/requirements.lock}"
stamp="$venv/.w2v-installed"
if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  log "installing the locked environment ($lock; torch 2.14 brings ~4.6 GB of CUDA libraries)"
  start=$(date +%s)
  "$venv/bin/python" -m pip install -q -r "$lock"
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo"
  touch "$stamp"
  log "installed in $(( $(date +%s) - start )) s"
else
  log "w2vtools already installed in $venv"
fi
bash "$repo/tools/install_kenlm.sh"
if ! command -v sclite >/dev/null 2>&1 && [ ! -x /usr/lib/sctk/bin/sclite ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing sclite (Debian sctk) for the scoring tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sctk >/dev/null) \
    || log "could not install sctk; the sclite comparison tests will skip"
fi
log "done: activate with '. $venv/bin/activate'"
