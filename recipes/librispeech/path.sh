# shellcheck shell=bash
# Environment of this recipe: the shared one (w2v, KenLM's tools and utils/ on PATH, LC_ALL=C).
. "$(dirname "${BASH_SOURCE[0]}")/utils/path.sh"
