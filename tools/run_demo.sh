#!/usr/bin/env bash
# Quick start (1): install, then run the main job end to end on the embedded synthetic demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m tools.demo "$@"
