#!/usr/bin/env bash
# BERT-XML on one CUDA GPU in one command (a few minutes): bf16 autocast, SDPA, the base config on 4,096-token notes
# with 8,000 and 74,736 codes, inference and training, plus an fp32 row to check the GPU kernels against the naive
# head. Run from anywhere: `bash benchmarks/gpu_check.sh`; extra arguments go to bench_model.py.
# Prints the tables for benchmarks/README.md and writes benchmarks/results_cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA device'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" benchmarks/bench_model.py --device cuda --autocast bf16 --configs base --lengths 4096 \
    --codes 8000 74736 --whole_codes 8000 74736 --variant_codes 8000 --output benchmarks/results_cuda.json "$@"
