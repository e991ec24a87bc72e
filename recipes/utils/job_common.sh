# shellcheck shell=bash
# Shared argument handling of the job runners (run_local.sh, slurm.sh).
#
# Both take Kaldi's calling convention:
#
#   RUNNER [runner options] [JOB=1:N] LOG-FILE COMMAND [ARGS...]
#
# * JOB=1:N runs N jobs; the word JOB (or whatever name stands left of `=`,
#   upper case) is replaced by the job number everywhere in LOG-FILE and in the
#   command. JOB=3 runs only job 3. Without a range one job runs.
# * The command is rebuilt into one bash command line the way Kaldi's run.pl
#   does: a word without white space is kept as it is (so an escaped `\|` or
#   `\>` on the caller's line becomes a real pipe or redirection in the job),
#   a word with white space is single-quoted. Jobs run under
#   `bash -o pipefail`, so a failing command anywhere in a pipe fails the job.
# * Everything the command prints goes to LOG-FILE, framed by a header (the
#   command, the start time) and a footer (`# Accounting: time=S`,
#   `# Ended (code C) at DATE`).
#
# Runner options (accepted by both runners so cmd.sh can switch freely):
#   --max-jobs-run N   at most N jobs at once
#   --num-threads N    threads per job (sets OMP_NUM_THREADS locally, cpus-per-task on Slurm)
#   --mem SIZE         memory per job (Slurm; ignored locally)
#   --gpu N            GPUs per job (Slurm --gres=gpu:N; locally recorded only)
#   --time T           time limit per job (Slurm; ignored locally)
#   --partition P      Slurm partition (ignored locally)
#   --sbatch-args "..." extra words for sbatch (ignored locally)

jc_self=${0##*/}
jc_max_jobs=
jc_threads=
jc_mem=
jc_gpu=0
jc_time=
jc_partition=
jc_sbatch_args=
jc_var=JOB
jc_first=1
jc_last=1
jc_ranged=0

jc_die() {
  echo "$jc_self: $*" >&2
  exit 1
}

jc_usage() {
  cat >&2 <<USAGE
Usage: $jc_self [options] [JOB=1:N] LOG-FILE COMMAND [ARGS...]
  Runs COMMAND once per job, with JOB replaced by the job number in LOG-FILE and
  in the command, and its output written to LOG-FILE.
  e.g.: $jc_self --max-jobs-run 2 JOB=1:4 exp/log/decode.JOB.log \\
          w2v decode exp/am/final.pt data/split4/JOB --output exp/dec/hyp.JOB.txt
Options:
  --max-jobs-run N  --num-threads N  --mem SIZE  --gpu N  --time T
  --partition P  --sbatch-args "WORDS"
USAGE
  exit 1
}

jc_parse() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --max-jobs-run|--num-threads|--mem|--gpu|--time|--partition|--sbatch-args)
        [ $# -ge 2 ] || jc_die "option $1 needs a value"
        case "$1" in
          --max-jobs-run) jc_max_jobs=$2 ;;
          --num-threads) jc_threads=$2 ;;
          --mem) jc_mem=$2 ;;
          --gpu) jc_gpu=$2 ;;
          --time) jc_time=$2 ;;
          --partition) jc_partition=$2 ;;
          --sbatch-args) jc_sbatch_args=$2 ;;
        esac
        shift 2
        ;;
      --config)
        # Kaldi passes --config conf/queue.conf to queue.pl; we take the same
        # options one per line ("--mem 4G") from the file.
        [ $# -ge 2 ] || jc_die "option --config needs a file"
        [ -f "$2" ] || jc_die "config file $2 not found"
        local line words=()
        while IFS= read -r line || [ -n "$line" ]; do
          line=${line%%#*}
          # shellcheck disable=SC2206
          [ -n "${line// /}" ] && words+=($line)
        done <"$2"
        shift 2
        set -- "${words[@]}" "$@"
        ;;
      -h|--help) jc_usage ;;
      --*) jc_die "unknown option $1 (try --help)" ;;
      *) break ;;
    esac
  done

  case "$1" in
    -*) jc_die "options must come before the job range and log file" ;;
  esac

  if [[ ${1:-} =~ ^([A-Z][A-Z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
    jc_var=${BASH_REMATCH[1]}
    jc_first=${BASH_REMATCH[2]}
    jc_last=${BASH_REMATCH[3]}
    jc_ranged=1
    shift
  elif [[ ${1:-} =~ ^([A-Z][A-Z0-9_]*)=([0-9]+)$ ]]; then
    jc_var=${BASH_REMATCH[1]}
    jc_first=${BASH_REMATCH[2]}
    jc_last=${BASH_REMATCH[2]}
    jc_ranged=1
    shift
  elif [[ ${1:-} =~ ^[A-Z][A-Z0-9_]*=.*: ]]; then
    jc_die "bad job range '$1' (expected e.g. JOB=1:4)"
  fi
  [ "$jc_first" -ge 1 ] 2>/dev/null || jc_die "job numbers start at 1, got $jc_first"
  [ "$jc_last" -ge "$jc_first" ] || jc_die "empty job range $jc_var=$jc_first:$jc_last"

  [ $# -ge 2 ] || jc_usage
  jc_log=$1
  shift
  if [ "$jc_last" -gt "$jc_first" ] && [[ $jc_log != *"$jc_var"* ]]; then
    jc_die "log file '$jc_log' must contain $jc_var when running jobs $jc_first..$jc_last"
  fi
  if [ -n "$jc_max_jobs" ] && ! [[ $jc_max_jobs =~ ^[1-9][0-9]*$ ]]; then
    jc_die "--max-jobs-run takes a positive number, got '$jc_max_jobs'"
  fi

  # Rebuild one command line (run.pl's rule, with correct quoting).
  jc_cmd=
  local word
  for word in "$@"; do
    if [[ $word =~ ^[^[:space:]]+$ ]]; then
      jc_cmd+="$word "
    else
      jc_cmd+="'${word//\'/\'\\\'\'}' "
    fi
  done
  jc_cmd=${jc_cmd% }
}

# The command line / log file of job $1.
jc_job_cmd() { printf '%s' "${jc_cmd//$jc_var/$1}"; }
jc_job_log() { printf '%s' "${jc_log//$jc_var/$1}"; }
