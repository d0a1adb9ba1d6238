#!/usr/bin/env bash
# The installed wheel, away from the checkout (issue 24): builds kmask's wheel from a clean
# copy of the checkout (git's tracked and untracked-but-not-ignored files, so no stale build/
# in the checkout leaks into it), installs it with its dependencies into a fresh venv, and
# from an empty working folder (the checkout's configs/ out of sight) runs that venv's
# `kmask build-ops`, `kmask info`, `kmask make-shapes` and three training steps of the shipped
# config shapes_tiny by name. Prints each step's wall time; leaves nothing in the checkout
# and removes its temporary folder at exit.
#
# Usage: bash .ci/wheel_check.sh   (PYTHON=... picks the Python that builds; default python)
# pip's cache is not used (--no-cache-dir), so the install time is that of a CI machine
# without one: the dependencies, TensorFlow among them, are downloaded every time.
set -euo pipefail
unset PYTHONPATH PYTHONHOME # nothing but the venv may provide kmask
export TF_CPP_MIN_LOG_LEVEL=2

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kmask-wheel.XXXXXX")
tmp=$(cd "$tmp" && pwd -P)
venv=$tmp/venv work=$tmp/work
export KMASK_CACHE_DIR=$tmp/cache # build-ops compiles the wheel's sources, not a cached op
timings=()
began=$EPOCHREALTIME

since() { # start: seconds from start to now, one decimal
  awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'
}

report() {
  local rc=$?
  trap - EXIT
  local start=$EPOCHREALTIME
  cd / && rm -rf "$tmp"
  echo "=== wheel check times (seconds)"
  printf '  %s\n' "${timings[@]}"
  printf '  %-13s %6s\n' cleanup "$(since "$start")"
  printf '  %-13s %6s\n' total "$(since "$began")"
  [ "$rc" -eq 0 ] && echo "wheel check passed" || echo "wheel check FAILED (exit $rc)"
  exit "$rc"
}
trap report EXIT
trap "exit 130" INT # a signal ends the script through report too
trap "exit 143" TERM

die() {
  echo "wheel check: $*" >&2
  exit 1
}

timed() { # label limit-seconds command...: runs it, its output also in $tmp/label.log
  local label=$1 limit=$2 start=$EPOCHREALTIME rc=0
  shift 2
  echo "=== $label: $*"
  timeout --kill-after=30 "$limit" "$@" 2>&1 | tee "$tmp/$label.log" || rc=$?
  timings+=("$(printf '%-13s %6s' "$label" "$(since "$start")")")
  [ "$rc" -eq 0 ] || die "$label failed (exit $rc$([ "$rc" -ne 124 ] || echo ": ${limit}s limit"))"
}

case "$tmp/" in "$root"/*) die "temporary folder $tmp is inside the checkout $root" ;; esac
mkdir -p "$tmp/src" "$tmp/dist" "$work"

# tar skips the tracked files deleted in the working tree (--ignore-failed-read).
timed copy 120 bash -c 'cd "$0" && git ls-files -z --cached --others --exclude-standard |
  tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C "$1"' "$root" "$tmp/src"
# Build isolation: the wheel is built with what pyproject's [build-system] asks for.
timed build-wheel 300 "$python" -m pip wheel --no-deps --no-cache-dir --progress-bar off \
  -w "$tmp/dist" "$tmp/src"
wheels=("$tmp"/dist/kmask-*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || die "expected one wheel: ${wheels[*]}"
timed venv 120 "$python" -m venv "$venv"
timed install 900 "$venv/bin/python" -m pip install --no-cache-dir --progress-bar off \
  "${wheels[0]}"

cd "$work"
# kmask and its configs must come from the venv, not from the checkout.
timed import 120 "$venv/bin/python" -c '
import sys
from pathlib import Path

import kmask
from kmask.config.shipped_configs import configs_dir

venv = Path(sys.argv[1])
for what, path in (("package", Path(kmask.__file__)), ("configs", configs_dir())):
    print(f"kmask {what}: {path}")
    if path is None or venv not in path.parents:
        sys.exit(f"kmask {what} is not in the venv {venv}: {path}")
' "$venv"

# The README's order: build-ops compiles (kmask info alone would too), info shows its library.
timed build-ops 600 "$venv/bin/kmask" build-ops
timed info 120 "$venv/bin/kmask" info
grep -q "custom op library: $KMASK_CACHE_DIR/" "$tmp/info.log" ||
  die "kmask info does not load the op that build-ops built in $KMASK_CACHE_DIR"
timed make-shapes 120 "$venv/bin/kmask" make-shapes --out data/shapes --num-train 4 --num-val 2
# shapes_tiny by name: its data paths (data/shapes/...) are relative to this folder.
timed train 300 "$venv/bin/kmask" train --config shapes_tiny --out run \
  --set train.max_steps=3 --set train.steps_per_epoch=3
[ -f run/config.yaml ] && compgen -G "run/checkpoints/ckpt-*" >/dev/null ||
  die "kmask train left no config.yaml or checkpoint in its run directory"
