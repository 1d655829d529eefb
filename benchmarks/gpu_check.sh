#!/usr/bin/env bash
# Everything BERT-XML measures on one CUDA GPU, in one command of under 10 minutes (GPU time is short):
#   bash ../shared/device/prepare.sh                       # here: wheels the GPU image lacks, into .device/
#   source .device/setup.sh && bash benchmarks/gpu_check.sh  # on the GPU machine (run tool: timeout_s 600)
# Stages, most important first; each has its own time limit, and one that fails or would overrun the total is
# recorded and the next one runs:
#   heads    every exact head path vs the naive head (values, gradients), times and memory: 8,000 / 74,736 codes
#   model    bench_model.py, bf16 autocast, base config, 4,096-token note: encoder, head, whole model, head variants
#   pretrain pretrain.py MLM throughput and MFU, BERT-base, 512-token blocks, batch 32, bf16
#   coding   train.py note tokens/s and MFU (length-grouped vs random batches), predict notes/s (bf16 vs fp32)
#   fsdp     configs/accelerate/fsdp.yaml on one GPU process, then AutoModel.from_pretrained(trust_remote_code)
#   compile  pretrain.py as above with --torch_compile
# `bash benchmarks/gpu_check.sh heads model` runs chosen stages. Tables go to stdout and, with every log and JSON,
# to $OUT (the run tool's folder) or benchmarks/gpu_results/; summary.txt says what ran and what did not.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
RESULTS="${OUT:-benchmarks/gpu_results}"
TOTAL_S="${TOTAL_S:-560}"
STAGES=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=(heads model pretrain coding fsdp compile)
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA device'" || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"; date -u; } | tee -a "$SUMMARY"

START=$SECONDS
stage() {  # stage NAME LIMIT_S COMMAND...: run it under its limit, log it, record the outcome
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_S - (SECONDS - START)))
  if (( left < 30 )); then echo "$name: not run (total time spent)" | tee -a "$SUMMARY"; return; fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" > >(tee "$RESULTS/$name.log") 2> "$RESULTS/$name.err"
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s$( ((rc == 124)) && echo ' (time limit)')" | tee -a "$SUMMARY"
  ((rc == 0)) || tail -20 "$RESULTS/$name.err"
}

run_fsdp() {  # a tiny coder fine-tuned under the FSDP config, then loaded as a Hub user would
  local work; work=$(mktemp -d)
  "$PYTHON" - "$work" <<'EOF' || return 1
import argparse, sys
from pathlib import Path
from benchmarks.bench_coding import prepare
prepare(argparse.Namespace(config="tiny", codes=50, notes=64, max_words=600, predict_notes=4), Path(sys.argv[1]))
EOF
  "$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
    --mixed_precision bf16 train.py \
    --model_name_or_path "$work/encoder" --train_file "$work/train.jsonl" --validation_file "$work/validation.jsonl" \
    --label_file "$work/codes.txt" --output_dir "$work/coder" --max_train_steps 4 --per_device_train_batch_size 4 \
    || return 1
  "$PYTHON" - "$work/coder" <<'EOF'
import sys, torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
with torch.no_grad():
    logits = model(**tokenizer(["patient denies chest pain"], return_tensors="pt")).logits
assert logits.shape == (1, model.config.num_labels) and torch.isfinite(logits).all()
print(f"FSDP output loads with AutoModel: {type(model).__name__}, {model.config.num_labels} codes, finite logits")
EOF
}
export -f run_fsdp
export PYTHON

for name in "${STAGES[@]}"; do
  case $name in
    heads) stage heads 150 "$PYTHON" benchmarks/check_head_paths.py --device cuda --codes 8000 74736 --tokens 4096 \
             --block_size 1024 4096 --budget 0.3 --output "$RESULTS/head_paths_cuda.json" ;;
    model) stage model 150 "$PYTHON" benchmarks/bench_model.py --device cuda --autocast bf16 --configs base \
             --lengths 4096 --codes 8000 74736 --whole_codes 8000 74736 --variant_codes 74736 --budget 0.3 \
             --output "$RESULTS/results_cuda.json" ;;
    pretrain) stage pretrain 120 "$PYTHON" benchmarks/bench_pretrain.py --configs base --steps 40 --batch_scale 16 \
                --mixed_precision bf16 --notes 3000 --dataloader_num_workers 4 --quiet ;;
    coding) stage coding 150 "$PYTHON" benchmarks/bench_coding.py --config base --codes 8000 --notes 600 \
              --max_words 3000 --steps 25 --batch_size 8 --mixed_precision bf16 --predict_notes 100 --quiet ;;
    fsdp) stage fsdp 120 bash -c run_fsdp ;;
    compile) stage compile 150 "$PYTHON" benchmarks/bench_pretrain.py --configs base --steps 40 --batch_scale 16 \
               --mixed_precision bf16 --notes 3000 --dataloader_num_workers 4 --torch_compile --quiet ;;
    *) echo "unknown stage $name" | tee -a "$SUMMARY" ;;
  esac
done
echo "=== summary ($((SECONDS - START)) s)"; cat "$SUMMARY"
