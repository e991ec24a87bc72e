# shellcheck shell=bash
# Parse `--name value` options into shell variables that the sourcing script
# has already given defaults (Kaldi's convention, written afresh for w2v).
#
# Source it after setting defaults; it consumes the options from "$@" and
# leaves the positional arguments in place:
#
#   stage=0
#   nj=4
#   quick=false
#   corpus=
#   help_message="Usage: $0 [options]"
#   . utils/parse_options.sh
#
# Rules:
#   --some-name VALUE and --some-name=VALUE set $some_name (dashes become
#     underscores). The variable must already exist: an unknown option is an
#     error, so typos never pass silently.
#   A variable whose default is true/false is a switch: `--quick` alone means
#     true; `--quick false` and `--quick=false` also work.
#   --config FILE sources FILE (name=value lines) before the options that follow.
#   --help / -h prints $help_message and exits 0.
#   --  stops option parsing; what follows is positional.
#
# The names of the options given are recorded in $cmdline_options (space
# separated), so a script can tell a default from an explicit choice.

cmdline_options=${cmdline_options:-}
__po_self=${0##*/}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then
        printf '%s\n' "$help_message"
      else
        echo "$__po_self: no help message" >&2
      fi
      exit 0
      ;;
    --)
      shift
      break
      ;;
    --*=*)
      __po_name=${1%%=*}
      __po_value=${1#*=}
      __po_has_value=1
      shift
      ;;
    --?*)
      __po_name=$1
      __po_has_value=0
      shift
      ;;
    *)
      break
      ;;
  esac

  __po_var=${__po_name#--}
  __po_var=${__po_var//-/_}
  if ! [[ $__po_var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "$__po_self: invalid option $__po_name" >&2
    exit 1
  fi

  if [ "$__po_var" = config ]; then
    if [ $__po_has_value = 0 ]; then
      if [ $# -eq 0 ]; then
        echo "$__po_self: option --config needs a file" >&2
        exit 1
      fi
      __po_value=$1
      shift
    fi
    if [ ! -f "$__po_value" ]; then
      echo "$__po_self: config file $__po_value not found" >&2
      exit 1
    fi
    # shellcheck disable=SC1090
    . "$__po_value"
    continue
  fi

  # ${!name+x} is set exactly when the variable exists (even if empty).
  if [ -z "${!__po_var+x}" ]; then
    echo "$__po_self: unknown option $__po_name" >&2
    exit 1
  fi

  __po_old=${!__po_var}
  if [ $__po_has_value = 0 ]; then
    if [ "$__po_old" = true ] || [ "$__po_old" = false ]; then
      # A switch: takes the next word only when it is true or false.
      if [ $# -gt 0 ] && { [ "$1" = true ] || [ "$1" = false ]; }; then
        __po_value=$1
        shift
      else
        __po_value=true
      fi
    else
      if [ $# -eq 0 ]; then
        echo "$__po_self: option $__po_name needs a value" >&2
        exit 1
      fi
      __po_value=$1
      shift
    fi
  fi

  if [ "$__po_old" = true ] || [ "$__po_old" = false ]; then
    if [ "$__po_value" != true ] && [ "$__po_value" != false ]; then
      echo "$__po_self: option $__po_name takes true or false, got '$__po_value'" >&2
      exit 1
    fi
  fi

  printf -v "$__po_var" '%s' "$__po_value"
  cmdline_options="${cmdline_options:+$cmdline_options }$__po_var"
done

unset __po_name __po_value __po_var __po_old __po_has_value __po_self
true
