#!/usr/bin/env bash
# Build the peers the benchmarks (and the fairseq comparison tests) run against.
#
#   fairseq    fairseq-fixed in its own venv (fairseq pins old numpy/hydra and must not share ours),
#              with the same torch release as our lock, so that both sides use one BLAS/kernels build
#   ours       transformers, jiwer and pyctcdecode are already in requirements.lock (the test
#              extra): make setup installs them
#
# Usage: bash benchmarks/setup_peers.sh [PEERS_DIR]     (default: .peers in the repository)
# Then:  export W2V_FAIRSEQ_PYTHON=PEERS_DIR/fairseq/bin/python   (the default the benchmarks and
#        tests look at, so with the default PEERS_DIR nothing needs exporting)
# Idempotent: a finished venv is checked and kept. Building fairseq takes about 5 minutes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="${1:-${W2V_PEERS:-$repo/.peers}}"
python="${W2V_PYTHON_FOR_VENV:-$(command -v python3.11 || command -v python3)}"
log() { echo "[$(date +%H:%M:%S)] setup_peers: $*" >&2; }

bash "$repo/tools/setup.sh" >/dev/null   # our side, from the lock (transformers, jiwer, pyctcdecode)

torch_pin="$(grep -E '^torch==' "$repo/requirements.lock" | cut -d' ' -f1)"
fs="$peers/fairseq"
if "$fs/bin/python" -c "import fairseq, torch; assert torch.__version__.split('+')[0] == '${torch_pin#torch==}'" 2>/dev/null; then
  log "fairseq already built in $fs"
else
  log "building fairseq-fixed with $torch_pin in $fs (about 5 minutes)"
  rm -rf "$fs"
  "$python" -m venv "$fs"
  "$fs/bin/python" -m pip install -q "$torch_pin" "numpy<2" soundfile
  "$fs/bin/python" -m pip install -q fairseq-fixed
  "$fs/bin/python" -c "import fairseq; print('fairseq', fairseq.__version__)" >&2
fi
log "done: W2V_FAIRSEQ_PYTHON=$fs/bin/python"
