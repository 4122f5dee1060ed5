#!/usr/bin/env bash
# Quick start (2): install, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
