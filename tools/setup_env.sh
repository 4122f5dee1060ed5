#!/usr/bin/env bash
# Create .venv with the project and its test tools installed (idempotent; CI starts from a clean clone).
# AUDIOTAG_CUDA=12: DALI's CUDA 12 build (torch cu12x) instead of the CUDA 13 one. AUDIOTAG_WHEELS=DIR: install
# from that folder only (pip --no-index --find-links DIR; made by tools/offline_wheels.py), with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${AUDIOTAG_CUDA:-13}
case "$cuda" in 12|13) ;; *) echo "AUDIOTAG_CUDA must be 12 or 13, not '$cuda'" >&2; exit 2;; esac
offline=()
if [ -n "${AUDIOTAG_WHEELS:-}" ]; then
  offline=(--no-index --find-links "$AUDIOTAG_WHEELS")
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$( (cat pyproject.toml; echo "cuda$cuda") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -n "${AUDIOTAG_WHEELS:-}" ] || .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${offline[@]}" -e ".[dev,cuda$cuda]"
  touch "$stamp"
fi
