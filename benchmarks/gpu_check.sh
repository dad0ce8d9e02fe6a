#!/usr/bin/env bash
# On a CUDA machine: the kernel tests (the CUDA ones included), the engine's CUDA tests and the
# decode attention table
# on the GPU, in under 5 minutes. Needs only python3 with torch (CUDA) and Triton; run from
# anywhere. Logs and JSON go to $OUT if set, else benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
# The tiny test models train their tokenizer on a paper from ../shared; where only the repo
# travels, carry a copy in ./shared (ignored by git): see tests/tiny_models.py.
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
status=0

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  "$PY" -c "import triton; print('triton', triton.__version__)" || echo "triton: missing"
  "$PY" -c "import flash_attn; print('flash-attn', flash_attn.__version__)" || echo "flash-attn: missing"
} 2>&1 | tee "$OUT/gpu_info.txt"

echo "== kernel tests (CPU and CUDA) =="
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/kernels --durations=8 \
  2>&1 | tee "$OUT/gpu_tests.log" || status=1

echo "== engine on CUDA against transformers (tiny models; cascade on and off) =="
HF_HUB_OFFLINE=1 timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_engine_cuda.py \
  2>&1 | tee "$OUT/gpu_engine_tests.log" || status=1

echo "== decode attention table, float32 (+ cost-rule sweep) =="
timeout 75 "$PY" -m benchmarks.attention --device cuda --dtype float32 --sizes 64x4096 \
  --cost-rule --out "$OUT/attention_cuda_float32.json" 2>&1 | tee "$OUT/gpu_table_float32.log" \
  || status=1

echo "== decode attention table, bfloat16 =="
timeout 45 "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --sizes 64x4096 \
  --out "$OUT/attention_cuda_bfloat16.json" 2>&1 | tee "$OUT/gpu_table_bfloat16.log" || status=1

echo "== bfloat16, 7B-class heads: Llama-3-8B (32 q / 8 kv x 128) and Llama-2-7B (32 / 32 x 128) =="
for shape in llama3-8b llama2-7b; do
  timeout 40 "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --shape "$shape" --quick \
    --sizes 64x4096,64x8192 --out "$OUT/attention_cuda_bfloat16_$shape.json" 2>&1 \
    | tee "$OUT/gpu_table_bfloat16_$shape.log" || status=1
done

echo "== where the time goes: kernels of one layer, 64 x 4096, bfloat16 =="
timeout 40 "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --quick --sizes 64x4096 \
  --profile --out "$OUT/attention_cuda_profile.json" 2>&1 | grep -v USDT \
  > "$OUT/gpu_profile.log" || status=1

echo "== same, PyTorch's CUDA kernels instead of Triton (bfloat16, quick) =="
timeout 30 "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --backend torch-cuda \
  --quick --sizes 64x4096 --out "$OUT/attention_cuda_torch.json" 2>&1 | tail -12 || status=1

exit $status
