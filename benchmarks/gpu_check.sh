#!/usr/bin/env bash
# On a GPU machine: the GPU tests (pytest -m gpu) and the benchmark suite, with one report of the machine,
# driver, versions and results: benchmarks/results/GPU_CHECK.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
report=benchmarks/results/GPU_CHECK.md
mkdir -p benchmarks/results
{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo; echo '```'; nvidia-smi || true
  python -c "import torch, nvidia.dali as dali; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| DALI', dali.__version__, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  echo '```'; echo; echo "## pytest -m gpu"; echo; echo '```'
} > "$report"
status=0
python -m pytest -m gpu -v -s -p no:cacheprovider 2>&1 | tee -a "$report" || status=$?
{ echo '```'; echo; echo "## python -m benchmarks.run_all"; echo; echo '```'; } >> "$report"
python -m benchmarks.run_all 2>&1 | tee -a "$report" || status=$?
echo '```' >> "$report"
echo "wrote $report (status $status)"
exit "$status"
