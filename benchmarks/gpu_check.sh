#!/usr/bin/env bash
# The GPU check in one short run (≤ 7 min on one H200), with no network: versions and the CUDA libraries loaded,
# pytest -m gpu, stream-fed vs in-memory training steps, the loader alone, and a fallback when DALI does not load.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--wheels DIR] [--compile] OUTDIR
#
# Python: the machine's own python3 when it has torch (nothing is created or upgraded), else tools/setup_env.sh's
# .venv. --wheels DIR (or AUDIOTAG_WHEELS): install the wheels there first (made by tools/offline_wheels.py) with
# pip --no-index; wheels split for transport (NAME.whl.part-aa, -ab, ...) are joined first. Each section records
# its status (benchmarks/gpu_check.py); the report is printed last and written to OUTDIR/GPU_CHECK.md.
# --dry-run: print the plan and the wheels it would install (from DIR, else the list benchmarks/gpu_wheels.txt,
# with their sizes), and change nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0 compile=() wheels=${AUDIOTAG_WHEELS:-} out=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --compile) compile=(--compile) ;;
    --wheels) wheels=${2:?--wheels needs a folder}; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
[ -n "$out" ] || { echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--wheels DIR] [--compile] OUTDIR" >&2; exit 2; }

if python3 -c 'import torch' 2>/dev/null; then
  py=$(command -v python3) how="the machine's python3 (has torch)"
elif [ -x .venv/bin/python ] || [ "$dry" = 1 ]; then
  py=$PWD/.venv/bin/python how="tools/setup_env.sh's .venv"
else
  py=$PWD/.venv/bin/python how="tools/setup_env.sh's .venv (created now)"
  AUDIOTAG_WHEELS=$wheels bash tools/setup_env.sh || echo "setup_env.sh failed: the sections will say what is missing"
fi
echo "python: $py ($how)"

# The wheels to install: those in the folder, or (dry run without one) the committed list.
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  echo "wheels from $wheels:"
  for first in "$wheels"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whl=${first%.part-aa}
    if [ "$dry" = 1 ]; then echo "  would join $(basename "$whl").part-* into $(basename "$whl")"
    else cat "$whl".part-* > "$whl" && rm -f "$whl".part-*; fi
  done
  du -b "$wheels"/*.whl "$wheels"/*.whl.part-* 2>/dev/null | awk '{n++; t+=$1; sub(".*/", "", $2); printf "  %s %.1f MiB\n", $2, $1/1048576}
    END {printf "  %d files, %.1f MiB\n", n, t/1048576}'
elif [ -n "$wheels" ]; then
  echo "no wheel folder $wheels" >&2; exit 2
else
  echo "wheels it would need on the GPU machine (benchmarks/gpu_wheels.txt; tools/offline_wheels.py makes the folder):"
  awk '{n++; t+=$2; printf "  %s %.1f MiB\n", $1, $2/1048576} END {printf "  %d wheels, %.1f MiB\n", n, t/1048576}' \
    benchmarks/gpu_wheels.txt
fi

if [ "$dry" = 1 ]; then
  echo "install: $py -m pip install --no-index --find-links DIR DIR/*.whl (into that Python, else --target + PYTHONPATH)"
  exec python3 -m benchmarks.gpu_check "$out" --dry-run --python "$py" "${compile[@]}"
fi

mkdir -p "$out"
if [ -n "$wheels" ]; then
  if ! "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl; then
    site=$PWD/$out/site  # that Python's packages are read-only: beside it, on PYTHONPATH
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl \
      && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} || echo "installing the wheels failed: the sections will say what is missing"
  fi
fi
"$py" -m benchmarks.gpu_check "$out" "${compile[@]}"
