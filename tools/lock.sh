#!/usr/bin/env bash
# Regenerate requirements.lock deliberately: resolve pyproject.toml's ranges afresh, install the
# result into a fresh virtual environment, run the test suite there, and only then replace the lock.
#
# When: to take newer releases on purpose (a security fix, a new torch), never as part of an
# ordinary install. Commit the new lock together with the BENCHMARKS.md numbers rerun on it.
#
# How: `uv pip compile` (a pinned uv, installed into a throwaway venv) resolves for Python 3.11 on
# every platform (markers keep the CUDA wheels Linux-only), under tools/lock_constraints.txt (the
# deliberate choices, e.g. the torch release). The candidate goes to requirements.lock.new; a green
# suite moves it over requirements.lock, a red one leaves it beside the old lock for inspection.
#
# Usage: bash tools/lock.sh [--no-test] [PYTEST_ARGS...]     (or: make lock)
#   --no-test   write requirements.lock without the test run (review the diff yourself)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv_version="0.13.9"
run_tests=1
if [ "${1:-}" = "--no-test" ]; then run_tests=0; shift; fi
python="${W2V_PYTHON_FOR_VENV:-$(command -v python3.11 || command -v python3)}"
work="$(mktemp -d "${TMPDIR:-/tmp}/w2v-lock.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log() { echo "[$(date +%H:%M:%S)] lock: $*" >&2; }

log "installing uv $uv_version into $work/uv"
"$python" -m venv "$work/uv"
"$work/uv/bin/python" -m pip install -q "uv==$uv_version"

candidate="$repo/requirements.lock.new"
log "resolving pyproject.toml (extra: test) afresh -> $candidate"
(cd "$repo" && "$work/uv/bin/uv" pip compile --quiet --upgrade --universal --python-version 3.11 \
    --extra test --constraint tools/lock_constraints.txt --custom-compile-command "make lock" \
    --output-file "$candidate" pyproject.toml)
if [ -f "$repo/requirements.lock" ]; then
  diff -u "$repo/requirements.lock" "$candidate" | grep -E '^[-+][a-z0-9]' >&2 || log "no version changed"
fi

if [ "$run_tests" = 0 ]; then
  mv "$candidate" "$repo/requirements.lock"
  log "wrote requirements.lock (not tested: run 'make test')"
  exit 0
fi
log "installing the candidate into a fresh venv and running the test suite there"
export W2V_LOCK="$candidate"   # setup.sh installs it; the suite checks the venv against it
bash "$repo/tools/setup.sh" "$work/venv"
if (cd "$repo" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"); then
  mv "$candidate" "$repo/requirements.lock"
  log "the suite passed: requirements.lock updated"
else
  log "the suite failed on the candidate: requirements.lock unchanged, candidate kept at $candidate"
  exit 1
fi
