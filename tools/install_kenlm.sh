#!/usr/bin/env bash
# Build KenLM's command-line tools (lmplz, build_binary, query) into tools/bin.
#
# The kenlm wheel on PyPI only ships the Python query module; the estimation
# tools have no wheel, so we build them from the kenlm source distribution on
# PyPI with cmake and Debian's boost development packages.
#
# Idempotent: does nothing when tools/bin already holds working binaries
# (pass --force to rebuild). Used by CI before pytest.
#
# Usage:
#   tools/install_kenlm.sh [--force] [--no-apt] [--jobs N]
#
# Environment:
#   KENLM_PREFIX  where the binaries go (default: <repo>/tools/bin)
#   PYTHON        the python whose pip downloads the sdist (default: the first of the active
#                 virtual environment, <repo>/.venv and python3 that has pip)
#
# Example:
#   tools/install_kenlm.sh && export PATH=$PWD/tools/bin:$PATH && lmplz --help

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${KENLM_PREFIX:-$here/bin}"
work="$here/kenlm"
python=""
force=0
use_apt=1
jobs="$(nproc 2>/dev/null || echo 2)"

while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --no-apt) use_apt=0 ;;
    --jobs) jobs="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install_kenlm.sh: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done

tools=(lmplz build_binary query)

installed() {
  for t in "${tools[@]}"; do
    [ -x "$prefix/$t" ] || return 1
  done
  # lmplz --help exits non-zero but prints its usage; a broken binary prints nothing.
  local usage
  usage="$("$prefix/lmplz" --help 2>&1 || true)"
  case "$usage" in *--order*) return 0 ;; *) return 1 ;; esac
}

if [ "$force" = 0 ] && installed; then
  echo "install_kenlm.sh: KenLM tools already in $prefix (use --force to rebuild)"
  exit 0
fi

# Build dependencies: a C++ compiler, cmake, boost, and the compression libraries
# lmplz can read (zlib, bzip2, xz).
debs=(build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev
      libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
for d in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$use_apt" = 1 ] && command -v apt-get >/dev/null; then
    echo "install_kenlm.sh: installing ${missing[*]}"
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "install_kenlm.sh: missing build dependencies: ${missing[*]} (install them, or rerun without --no-apt)" >&2
    exit 1
  fi
fi

pick_python() {
  local c
  for c in "${PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$here/../.venv/bin/python" python3; do
    [ -n "$c" ] || continue
    if "$c" -m pip --version >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

mkdir -p "$work"
sdist="$(ls "$work"/kenlm-*.tar.gz 2>/dev/null | head -n1 || true)"
if [ -z "$sdist" ]; then
  python="$(pick_python)" || { echo "install_kenlm.sh: no python with pip found (set PYTHON=...)" >&2; exit 1; }
  echo "install_kenlm.sh: downloading the kenlm source distribution from PyPI ($python -m pip)"
  "$python" -m pip download --quiet --no-binary kenlm --no-deps -d "$work" kenlm
  sdist="$(ls "$work"/kenlm-*.tar.gz | head -n1)"
fi

src="$work/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=1

build="$src/build"
mkdir -p "$build"
echo "install_kenlm.sh: building $(basename "$sdist") with $jobs jobs (a few minutes)"
(
  cd "$build"
  cmake .. -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 -DCOMPILE_TESTS=OFF >cmake.log 2>&1 \
    || { cat cmake.log >&2; exit 1; }
  make -j "$jobs" lmplz build_binary query >make.log 2>&1 || { tail -n 50 make.log >&2; exit 1; }
)

mkdir -p "$prefix"
for t in "${tools[@]}"; do
  install -m 0755 "$build/bin/$t" "$prefix/$t"
done
rm -rf "$src"
installed || { echo "install_kenlm.sh: built binaries do not run" >&2; exit 1; }
echo "install_kenlm.sh: installed ${tools[*]} into $prefix"
