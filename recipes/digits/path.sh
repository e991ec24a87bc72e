# shellcheck shell=bash
# Environment of this recipe: the shared one (w2v, KenLM's tools and utils/ on PATH, LC_ALL=C).
. "$(dirname "${BASH_SOURCE[0]}")/utils/path.sh"
# One thread per job: the recipe runs $nj jobs side by side instead. (Several
# threads per process on a busy 2-core machine spend their time waiting on
# each other: a BiLSTM update ran many times slower with 2 threads than with 1.)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
