#!/usr/bin/env bash
# Install cimsim (editable) with its dependencies into the active Python environment.
#   bash tools/install.sh          runtime dependencies
#   bash tools/install.sh test     runtime + test dependencies (pytest, hypothesis)
# torch: take the local CPU wheel of torch 2.13.0 when pip can find it without a network
# (these machines keep it on disk); otherwise let pip resolve the range in setup.cfg.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if python -m pip install -q --no-index torch==2.13.0 >/dev/null 2>&1; then
  echo "install.sh: torch 2.13.0 (CPU) from the local wheel"
else
  echo "install.sh: no local torch 2.13.0 wheel; pip resolves torch from setup.cfg's range"
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
python -m pip install -q -e ".${extra}"
python - <<'PY'
import torch, numpy, numba
print(f"install.sh: torch {torch.__version__}, numpy {numpy.__version__}, numba {numba.__version__}")
PY
