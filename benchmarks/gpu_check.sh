#!/usr/bin/env bash
# The GPU check, one command on a lent GPU machine (see the device tool; under 10 minutes on one H200):
#   here:   make gpu-wheels                       (the packages the machine's image lacks, into .whl/)
#   there:  device run, carry [".whl"], command:  bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --parts grpo]
# It installs the carried wheels, runs the CUDA-only tests (pytest -m cuda), then benchmarks/gpu_check.py:
# each recipe's tiny twin on CUDA in its own precision, GRPO on a Qwen2.5-VL-3B-shaped model (full, frozen
# vision, LoRA) and TRL's GRPOTrainer on the same work. Everything lands in $OUT (or ./gpu_out):
# gpu_check.json (every figure and the versions), cuda_tests.log, gpu_check.log; and vision_chunks.json: the
# 3B-wide vision tower's forward + backward with batched against per-chunk attention (benchmarks/vision_chunks.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" | tee "$OUT/gpu_check.log"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
timeout 120 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_numerics.py tests/test_strategies.py tests/test_decode_graph.py tests/test_oom.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout 40 python3 benchmarks/vision_chunks.py --device cuda --depth 8 --images 8 --out "$OUT/vision_chunks.json" 2>&1 | tee "$OUT/vision_chunks.log"
timeout 430 python3 benchmarks/gpu_check.py --json "$OUT/gpu_check.json" --budget-s 330 "$@" 2>&1 | tee "$OUT/gpu_check.log"
echo "gpu_check: exit ${PIPESTATUS[0]}"
