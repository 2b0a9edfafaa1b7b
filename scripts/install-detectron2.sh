#!/usr/bin/env bash
# Build and install detectron2 (the reference Mask R-CNN trainer of `orl-fast eval detection
# --engine detectron2`) from source against the installed torch: detectron2 publishes no wheels,
# and its compiled ops must match the torch they run with.
#
#   scripts/install-detectron2.sh [SOURCE]
#
# SOURCE: a git URL (default: the upstream repository at the commit this project is tested with;
# a URL without `git+` gets it), a source archive (.tar.gz, .tgz, .tar, .zip), or a source
# directory (copied first: the build writes into its tree). Idempotent: with a detectron2 whose
# compiled ops load already installed, it does nothing (FORCE=1 rebuilds). Environment: PYTHON
# (the interpreter, default python), MAX_JOBS (parallel compile jobs when ninja is installed),
# FORCE_CUDA=1 (compile the CUDA ops on a machine where torch sees no GPU).
set -euo pipefail

DEFAULT_SOURCE="git+https://github.com/facebookresearch/detectron2.git@02b5c4e295e990042a714712c21dc79b731e8833"
PYTHON="${PYTHON:-python}"
SOURCE="${1:-$DEFAULT_SOURCE}"
say() { echo "install-detectron2: $*"; }
die() { echo "install-detectron2: $*" >&2; exit 1; }

"$PYTHON" -c "import torch" >/dev/null 2>&1 \
  || die "torch is not installed for $PYTHON; install orl-fast first (pip install -c constraints.txt -e .)"

# Importing from / keeps a detectron2/ folder in the current directory out of the way.
installed() { (cd / && "$PYTHON" -c "import detectron2, detectron2._C; print(detectron2.__version__, detectron2.__file__)" 2>/dev/null); }
if [[ "${FORCE:-0}" != 1 ]] && found="$(installed)"; then
  say "detectron2 ${found%% *} is installed (${found#* }) and its compiled ops load: nothing to do (FORCE=1 rebuilds)"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
source_dir() {  # the folder holding setup.py: $1 itself or its only subfolder
  if [[ -f "$1/setup.py" ]]; then echo "$1"; return; fi
  local found; found="$(find "$1" -mindepth 2 -maxdepth 2 -name setup.py | head -n 1)"
  [[ -n "$found" ]] || die "no setup.py in $SOURCE"
  dirname "$found"
}
if [[ -d "$SOURCE" ]]; then
  cp -r "$SOURCE" "$work/src"
  target="$(source_dir "$work/src")"
elif [[ -f "$SOURCE" ]]; then
  mkdir "$work/src"
  case "$SOURCE" in
    *.zip) "$PYTHON" -m zipfile -e "$SOURCE" "$work/src" ;;
    *.tar.gz|*.tgz|*.tar|*.tar.bz2|*.tar.xz) tar -xf "$SOURCE" -C "$work/src" ;;
    *) die "$SOURCE: not a source archive (.tar.gz, .tgz, .tar, .zip) or directory" ;;
  esac
  target="$(source_dir "$work/src")"
elif [[ "$SOURCE" == *://* || "$SOURCE" == git@* ]]; then
  target="$SOURCE"
  [[ "$SOURCE" == git+* ]] || target="git+$SOURCE"
else
  die "$SOURCE: no such file or directory (expected a git URL, a source archive or a directory)"
fi

torch_version="$("$PYTHON" -c "import torch; print(torch.__version__)")"
say "building detectron2 from $SOURCE against torch $torch_version (a few minutes)"
start=$SECONDS
if [[ "${FORCE:-0}" == 1 ]]; then "$PYTHON" -m pip uninstall -y detectron2 >/dev/null 2>&1 || true; fi
"$PYTHON" -m pip install --no-build-isolation "$target" \
  || die "the build failed (see pip's output above); it needs a C++ compiler and the Python headers"
found="$(installed)" || die "detectron2 was installed but its compiled ops do not load"
say "installed detectron2 ${found%% *} at ${found#* } in $((SECONDS - start)) s"
