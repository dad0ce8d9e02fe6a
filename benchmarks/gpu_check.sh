#!/usr/bin/env bash
# On a CUDA machine: the kernel tests (the CUDA ones included), the engine's CUDA tests and the
# decode attention tables on the GPU, in under 5 minutes (a total budget, 300 s by default:
# GPU_CHECK_BUDGET_S; each step runs under min(its own cap, what is left); a step that the
# budget no longer allows is skipped and named in the summary). Needs only python3 with torch
# (CUDA), Triton, pytest and the project's own dependencies; run from anywhere. Everything goes
# to $OUT if set, else benchmarks/results/gpu_check: gpu_check.log (all output), one log per
# step, the tables' JSON, summary.txt and summary.json. Exits 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
# The tiny test models train their tokenizer on a paper from ../shared; where only the repo
# travels, carry a copy in ./shared (ignored by git): see tests/tiny_models.py.
OUT="${OUT:-benchmarks/results/gpu_check}"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-300}"
mkdir -p "$OUT"
# the device has no internet: never let transformers/hub wait on a connection
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

START=$SECONDS
STATUS=0
SUMMARY=()

# step NAME CAP_S LOG_FILE COMMAND...: run it under the budget, its output to the console and
# to $OUT/LOG_FILE (profiler USDT noise dropped), its result into the summary
step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 10)); then
    echo "== $name: SKIPPED (budget of ${BUDGET_S}s spent) =="
    SUMMARY+=("$name|SKIPPED (budget)|0|$log|")
    STATUS=1
    return
  fi
  local limit=$((cap < left ? cap : left))
  echo "== $name (limit ${limit}s) =="
  local t0=$SECONDS rc result detail
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v USDT | tee "$OUT/$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) result=ok ;;
    124 | 137) result="TIMEOUT (${limit}s)" ;;
    *) result="FAIL (exit $rc)" ;;
  esac
  ((rc == 0)) || STATUS=1
  # pytest's closing line ("161 passed, 7 skipped in 24.60s")
  detail=$(grep -E '[0-9]+ (passed|failed|error|skipped)|no tests ran' "$OUT/$log" | tail -1)
  # a table's 64 x 4096 row (per-seq / cascade ms, speedup), else the last line
  [[ -n $detail ]] || detail=$(grep -E '^ +64 +4096 ' "$OUT/$log" | tail -1 | tr -s ' ')
  [[ -n $detail ]] || detail=$(tail -1 "$OUT/$log")
  detail=${detail//\"/\'}
  detail=${detail//|/\/}
  SUMMARY+=("$name|$result|$((SECONDS - t0))|$log|${detail//=/}")
}

summary() {
  local total=$((SECONDS - START)) line name result secs log detail first=1
  {
    echo "== gpu_check summary: $( ((STATUS == 0)) && echo ALL PASSED || echo FAILURES) in ${total}s (budget ${BUDGET_S}s); files in $OUT =="
    for line in "${SUMMARY[@]}"; do
      IFS='|' read -r name result secs log detail <<<"$line"
      printf '  %-34s %-18s %4ss  %-34s %s\n' "$name" "$result" "$secs" "$log" "$detail"
    done
  } | tee "$OUT/summary.txt"
  {
    printf '{"status": %d, "total_s": %d, "budget_s": %d, "steps": [' "$STATUS" "$total" "$BUDGET_S"
    for line in "${SUMMARY[@]}"; do
      IFS='|' read -r name result secs log detail <<<"$line"
      ((first)) || printf ', '
      first=0
      printf '{"name": "%s", "result": "%s", "seconds": %s, "log": "%s", "detail": "%s"}' \
        "$name" "$result" "$secs" "$log" "$detail"
    done
    printf ']}\n'
  } >"$OUT/summary.json"
}

main() {
  echo "== device =="
  {
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
      echo "nvidia-smi: missing"
    fi
    # the host's CPU: the C kernels' tests run there too, with its own vector width
    grep -m1 "model name" /proc/cpuinfo
    grep -m1 -o -w avx512f /proc/cpuinfo || echo "no avx512f"
    "$PY" - <<'EOF'
import importlib.util
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name())
for name in ("triton", "flash_attn", "pytest", "transformers", "tokenizers", "safetensors", "tqdm", "numpy"):
    spec = importlib.util.find_spec(name)
    version = "missing"
    if spec is not None:
        try:
            version = getattr(__import__(name), "__version__", "present")
        except Exception as exc:  # noqa: BLE001 - report, do not stop
            version = f"broken ({exc})"
    print(f"{name}: {version}")
EOF
  } 2>&1 | tee "$OUT/gpu_info.txt"
  # Without CUDA or Triton every CUDA test would be skipped and the run look green: stop here.
  if ! "$PY" -c "import torch, triton; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "PREFLIGHT FAILED: $PY has no CUDA device or no Triton (see $OUT/gpu_info.txt);" \
      "set PYTHON to the interpreter with torch (CUDA) and Triton"
    SUMMARY+=("preflight|FAIL (no CUDA or Triton)|0|gpu_info.txt|")
    STATUS=2
    return
  fi

  # cold (Triton's cache and the C kernels' builds empty) ~115 s on an H200 machine, warm ~65 s
  step "kernel tests (CPU and CUDA)" 160 gpu_tests.log \
    "$PY" -m pytest -q -p no:cacheprovider -rfE tests/kernels --durations=8
  step "engine on CUDA vs transformers" 75 gpu_engine_tests.log \
    "$PY" -m pytest -q -p no:cacheprovider -rfE tests/engine/test_engine_cuda.py --durations=5
  # the server's default placement on the GPU (its app needs pydantic, its tests openai: carry
  # them as wheels, benchmarks/gpu_wheels.sh, and put them on PYTHONPATH before this script)
  step "engine processes on CUDA" 60 gpu_engine_process.log \
    "$PY" -m pytest -q -p no:cacheprovider -rfE tests/server/test_engine_process_cuda.py
  step "table float32 + cost rule" 50 gpu_table_float32.log \
    "$PY" -m benchmarks.attention --device cuda --dtype float32 --sizes 64x4096 \
    --cost-rule --out "$OUT/attention_cuda_float32.json"
  step "table bfloat16" 30 gpu_table_bfloat16.log \
    "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --sizes 64x4096 \
    --out "$OUT/attention_cuda_bfloat16.json"
  # 7B-class heads: Llama-3-8B (32 q / 8 kv x 128) and Llama-2-7B (32 / 32 x 128)
  for shape in llama3-8b llama2-7b; do
    step "table bfloat16 $shape" 30 "gpu_table_bfloat16_$shape.log" \
      "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --shape "$shape" --quick \
      --sizes 64x4096,64x8192 --out "$OUT/attention_cuda_bfloat16_$shape.json"
  done
  step "profile 64x4096 bfloat16" 25 gpu_profile.log \
    "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --quick --sizes 64x4096 \
    --profile --out "$OUT/attention_cuda_profile.json"
  # the default (unfused) against fused and the other tile settings, each checked for accuracy
  step "sweep smollm2 bfloat16 64x4096" 60 gpu_sweep.log \
    "$PY" -m benchmarks.triton_sweep --shape smollm2 --dtype bfloat16 --size 64x4096 \
    --passes 1 --budget-s 40 --out "$OUT/triton_sweep_smollm2_bfloat16.json"
  step "table torch-cuda bfloat16" 25 gpu_table_torch.log \
    "$PY" -m benchmarks.attention --device cuda --dtype bfloat16 --backend torch-cuda \
    --quick --sizes 64x4096 --out "$OUT/attention_cuda_torch.json"
}

# everything also into gpu_check.log; main and summary run in this shell (they set STATUS)
exec 3>&1 4>&2
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
main
summary
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE_PID" 2>/dev/null || true
exit "$STATUS"
