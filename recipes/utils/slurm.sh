#!/usr/bin/env bash
# Run jobs as one Slurm job array, with Kaldi's run.pl calling convention.
#
#   slurm.sh [options] [JOB=1:N] LOG-FILE COMMAND [ARGS...]
#
# Same meaning as run_local.sh: JOB is replaced by the array task number in the
# command and in LOG-FILE, each task's output goes to its log file, and the
# exit status is 0 only if every task succeeded (the failed tasks and their
# logs are named otherwise). Submits `sbatch --wait --array=FIRST-LAST[%MAX]`
# and blocks until the array finishes, so recipes run the same way on a laptop
# and on a cluster.
#
# Options (see job_common.sh): --max-jobs-run N (array throttle %N),
# --num-threads N (--cpus-per-task), --mem SIZE, --gpu N (--gres=gpu:N),
# --time T, --partition P, --sbatch-args "extra sbatch words", --config FILE.
# The submitted script and Slurm's own output go to LOG-DIR/q/.
#
# Example:
#   utils/slurm.sh --gpu 1 --mem 16G --time 4:00:00 JOB=1:8 exp/log/decode.JOB.log \
#     w2v decode exp/am/final.pt data/split8/JOB --output exp/dec/hyp.JOB.txt

set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=job_common.sh
. "$here/job_common.sh"
jc_parse "$@"

command -v sbatch >/dev/null 2>&1 ||
  jc_die "sbatch not found on PATH: no Slurm here (set train_cmd/decode_cmd to utils/run_local.sh in cmd.sh)"

logdir=$(dirname "$jc_log")
qdir=$logdir/q
mkdir -p "$qdir" || jc_die "cannot create $qdir"
base=$(basename "$jc_log")
base=${base//$jc_var/}
base=${base%.log}
base=${base//../.}
base=${base%.}
[ -n "$base" ] || base=job
script=$qdir/$base.sh
status_prefix=$qdir/$base.status
rm -f "$status_prefix".*

# The job script: substitutes the task id at run time (so quoting in the
# command is never touched twice) and records each task's exit status.
{
  echo '#!/usr/bin/env bash'
  echo "# written by $jc_self at $(date)"
  printf 'cd %q || exit 1\n' "$PWD"
  printf 'id=${SLURM_ARRAY_TASK_ID:?not run as a Slurm array task}\n'
  printf 'template=%q\n' "$jc_cmd"
  printf 'log_template=%q\n' "$jc_log"
  printf 'var=%q\n' "$jc_var"
  printf 'status_prefix=%q\n' "$status_prefix"
  [ -n "$jc_threads" ] && printf 'export OMP_NUM_THREADS=%q MKL_NUM_THREADS=%q\n' "$jc_threads" "$jc_threads"
  cat <<'BODY'
cmd=${template//$var/$id}
log=${log_template//$var/$id}
mkdir -p "$(dirname "$log")" || exit 1
start=$(date +%s)
{
  echo "# $cmd"
  echo "# Started at $(date) on $(hostname) (Slurm job ${SLURM_ARRAY_JOB_ID:-?}_$id)"
} >"$log"
bash -o pipefail -c "$cmd" </dev/null >>"$log" 2>&1
code=$?
{
  echo "# Accounting: time=$(($(date +%s) - start)) threads=${OMP_NUM_THREADS:-1}"
  echo "# Ended (code $code) at $(date)"
} >>"$log"
echo "$code" >"$status_prefix.$id"
exit "$code"
BODY
} >"$script"
chmod +x "$script"

array="$jc_first-$jc_last"
[ -n "$jc_max_jobs" ] && array+="%$jc_max_jobs"
sbatch_cmd=(sbatch --parsable --wait --array="$array" --job-name="$base"
  --output="$qdir/$base.%a.out" --export=ALL)
[ -n "$jc_threads" ] && sbatch_cmd+=(--cpus-per-task="$jc_threads")
[ -n "$jc_mem" ] && sbatch_cmd+=(--mem="$jc_mem")
[ "$jc_gpu" != 0 ] && sbatch_cmd+=(--gres="gpu:$jc_gpu")
[ -n "$jc_time" ] && sbatch_cmd+=(--time="$jc_time")
[ -n "$jc_partition" ] && sbatch_cmd+=(--partition="$jc_partition")
# shellcheck disable=SC2206
[ -n "$jc_sbatch_args" ] && sbatch_cmd+=($jc_sbatch_args)
sbatch_cmd+=("$script")

printf '%q ' "${sbatch_cmd[@]}" >"$qdir/$base.sbatch"
echo >>"$qdir/$base.sbatch"
"${sbatch_cmd[@]}" >"$qdir/$base.jobid" 2>"$qdir/$base.sbatch.err"
sbatch_code=$?

failed=()
for ((id = jc_first; id <= jc_last; id++)); do
  code=$(cat "$status_prefix.$id" 2>/dev/null || echo "unknown: killed, timed out or never started, see $qdir/$base.$id.out")
  [ "$code" = 0 ] || failed+=("$id:$code")
done

if [ ${#failed[@]} -gt 0 ]; then
  if [ $sbatch_code -ne 0 ] && [ ${#failed[@]} -eq $((jc_last - jc_first + 1)) ] && ! ls "$status_prefix".* >/dev/null 2>&1; then
    echo "$jc_self: sbatch failed (exit $sbatch_code): $(head -c 500 "$qdir/$base.sbatch.err")" >&2
  fi
  for f in "${failed[@]}"; do
    echo "$jc_self: job ${f%%:*} failed (exit ${f#*:}), log: $(jc_job_log "${f%%:*}")" >&2
  done
  total=$((jc_last - jc_first + 1))
  [ "$total" -gt 1 ] && echo "$jc_self: ${#failed[@]} / $total failed, logs are in $(jc_job_log '*')" >&2
  exit 1
fi
exit 0
