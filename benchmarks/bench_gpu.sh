#!/usr/bin/env bash
# One prepared GPU check, under 5 minutes on one H200: the CUDA tests, then the sweep
# benchmark on the GPU. Run from the repository root on the GPU machine:
#
#   bash benchmarks/bench_gpu.sh            # results also under $OUT when it is set
#
# Data: full MNIST from $INITSWEEP_DATA when its IDX files are there; otherwise the shipped
# sample (say which in the notes). Python packages the GPU image lacks (pydantic) travel
# as wheels in .whl/ (see the device tool's README) and are installed to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
out="${OUT:-/tmp/initsweep-gpu}"
mkdir -p "$out"
python3 - <<'PY' | tee "$out/env.txt"
import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY
timeout 120 python3 -m pytest -q tests/test_gpu.py tests/test_batched.py 2>&1 | tee "$out/tests.txt"
dataset=mnist-sample
if [ -n "${INITSWEEP_DATA:-}" ] && ls "$INITSWEEP_DATA"/MNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1; then dataset=mnist; fi
sed -e "s/dataset: mnist .*/dataset: $dataset/" -e "s/epochs: 2/epochs: 1/" -e "/train_limit/d" configs/grid.yaml > /tmp/grid-gpu.yaml
echo "default study on $dataset, 1 epoch per run, full training split:" | tee -a "$out/bench.txt"
timeout 150 python3 benchmarks/bench_sweep.py --device cuda --study /tmp/grid-gpu.yaml 2>&1 | tee -a "$out/bench.txt"
timeout 150 python3 benchmarks/bench_sweep.py --device cuda --seeds 1 --inits 3 2>&1 | tee -a "$out/bench.txt"
