# shellcheck shell=bash
# resolve_path P: an option's path as the user meant it. Absolute paths and ""
# stay as they are; a relative path is taken from where the recipe was started
# ($start_dir), unless only the recipe folder ($here) has it (conf/*.yaml).
# Sourced by run.sh after parse_options.sh, before it changes directory.
resolve_path() {
  case "$1" in
    "" | /*) printf '%s' "$1" ;;
    *) if [ -e "$start_dir/$1" ] || [ ! -e "$here/$1" ]; then printf '%s' "$start_dir/$1"; else printf '%s' "$here/$1"; fi ;;
  esac
}
