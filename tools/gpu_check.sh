#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU and no Rust: installs a ferrolab wheel built elsewhere (an abi3
# wheel from `python -m maturin build --release -o dist`), then runs the GPU tests and the GPU benchmark.
#
#   tools/gpu_check.sh [WHEEL_DIR]      (default: dist; the JSON goes to $OUT when set, else bench-results/)
#
# It uses the machine's Python with its NumPy/PyTorch/CuPy (a venv with --system-site-packages), needs no network,
# and takes a few minutes. NVRTC comes from the `nvidia-cuda-nvrtc` wheel when installed, else from PyTorch's
# NVIDIA wheels or a system CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-dist}"
OUT_DIR="${OUT:-bench-results}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WHEELS="$(cd "$WHEELS" && pwd)"
VENV="$(mktemp -d)/venv"
python3 -m venv --system-site-packages "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --no-deps --no-index --force-reinstall "$WHEELS"/ferrolab-*-abi3-*.whl
cd "$(mktemp -d)"   # away from the checkout: the installed package is what runs
REPO="$OLDPWD"
nvidia-smi -L || true
python - <<'PY'
import json, ferrolab as fl
print("ferrolab", fl.__version__, json.dumps(fl.gpu.info(), indent=1, default=str))
try:
    r = fl.gpu.compile_kernels("sm_90")
    print("NVRTC", r["nvrtc"], "kernels", len(r["kernels"]), "max registers", max(k["registers"] for k in r["kernels"]))
except RuntimeError as e:
    print("NVRTC:", e)
PY
status=0
python -m pytest -q -m gpu --noconftest -p no:cacheprovider -o addopts="" \
    --rootdir "$REPO" -c "$REPO/pyproject.toml" "$REPO/tests/test_gpu_device.py" || status=$?
python "$REPO/benches/bench_gpu.py" --quick --json "$OUT_DIR/bench_gpu.json" || status=$?
exit "$status"
