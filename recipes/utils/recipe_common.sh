# shellcheck shell=bash
# The preamble of every recipe's run.sh. Source it with the script's arguments,
# after the option defaults, $help_message and $path_options:
#
#   here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
#   stage=0
#   workdir=
#   corpus=
#   help_message="Usage: $0 [options]"
#   path_options="corpus"          # options that name files or folders
#   . "$here/utils/recipe_common.sh" "$@"
#
# It parses the options (utils/parse_options.sh; leftover arguments are an
# error), takes $workdir and every variable named in $path_options from where
# the script was started (utils/resolve_path.sh), sources the recipe's path.sh
# and cmd.sh from the recipe folder, and leaves the script in $workdir (default:
# the recipe folder) with utils/stages.sh loaded.

start_dir=$PWD
. "$here/utils/parse_options.sh"
if [ $# -ne 0 ]; then
  echo "$0: unexpected arguments: $*" >&2
  printf '%s\n' "$help_message" >&2
  exit 1
fi

. "$here/utils/resolve_path.sh"
workdir=$(resolve_path "${workdir:-$here}")
for __path_option in ${path_options:-}; do
  printf -v "$__path_option" '%s' "$(resolve_path "${!__path_option}")"
done
unset __path_option

cd "$here"
. ./path.sh
. ./cmd.sh
mkdir -p "$workdir"
cd "$workdir"
. "$here/utils/stages.sh"
