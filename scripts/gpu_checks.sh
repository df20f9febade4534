#!/usr/bin/env bash
# Every GPU check of the project in one command, on one lent GPU, within 9 minutes:
#   1. the missing packages from the carried wheels (benchmarks/gpu/fetch_wheels.sh fetched them
#      here): .whl/ into /tmp/site, TRL 1.12 from .whl-trl112/ into /tmp/site-trl112;
#   2. the GPU, torch and package versions;
#   3. every test file with a CUDA-only test (those skipped without CUDA);
#   4. the benchmark's assets, then benchmarks/rollout.py on its model at GRPO's rollout shape
#      (32 prompts x 8 samples x 256 tokens): the sampling engine with CUDA graphs and eager;
#   5. the GPU benchmark, rlhfkit against TRL (benchmarks/gpu/bench_gpu.py), with the time left
#      but what the last part needs;
#   6. scripts/gpu_check.py --quick: the pipeline on CUDA in bf16, with the time left.
# Each part runs under `timeout`, so a hung part cannot eat the others'. Everything lands in $OUT
# (at most 8 files): gpu_checks.log, pytest_cuda.xml, bench_table.md, bench_results.jsonl,
# bench_logs.txt, gpu_check.log, rollout.log.
#
#     OUT=/some/folder bash scripts/gpu_checks.sh          # from the repository root
#
# GPU_CHECKS_TINY=1 rehearses it on a CPU: no wheels, the test files' CPU tests, the benchmark's
# tiny mode against TRL under $TRL_PYTHON (default /tmp/peer-venv/bin/python, PPO from
# $TRL_PPO_PATH, default /tmp/peer-trl-1.12.0), the pipeline check with tiny sizes.
# GPU_CHECKS_LIMIT_S (default 530) is the whole script's time.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_checks.log") 2>&1
TEE=$!
LIMIT=${GPU_CHECKS_LIMIT_S:-530}
TINY=${GPU_CHECKS_TINY:-0}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-gpu}
GPU_CHECK_S=75 # what part 5 needs; the benchmark leaves it
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

left() { echo $((LIMIT - SECONDS)); }
part() { echo; echo "=== [$SECONDS s] $*"; }

part "1. packages"
if [ "$TINY" = 1 ]; then
    PYTHON=${PYTHON:-.venv/bin/python}
    TRL_PYTHON=${TRL_PYTHON:-/tmp/peer-venv/bin/python}
    TRL_PPO_PATH=${TRL_PPO_PATH:-/tmp/peer-trl-1.12.0}
    export PYTHONPATH=src
else
    PYTHON=python3
    TRL_PYTHON=python3
    TRL_PPO_PATH=/tmp/site-trl112
    install() { timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$1" "${@:2}"; }
    install /tmp/site .whl/*.whl || echo "FAILED: installing .whl"
    install /tmp/site-trl112 .whl-trl112/*.whl || echo "FAILED: installing .whl-trl112"
    export PYTHONPATH=/tmp/site:src
fi

part "2. versions"
git log -1 --format='commit %h %ci' 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
    2>/dev/null || echo "no nvidia-smi"
timeout 60 "$PYTHON" - <<'EOF'
import importlib.metadata as md, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "tokenizers", "accelerate", "peft", "datasets", "trl",
             "huggingface_hub", "safetensors", "pyarrow", "numpy", "pytest"):
    try:
        module = __import__(name)
        print(f"{name} {md.version(name)} from {module.__file__}")
    except Exception as error:
        print(f"{name}: {type(error).__name__}: {error}")
EOF

part "3. CUDA tests"
# the files holding a test that is skipped without CUDA
mapfile -t FILES < <(grep -rlE '@needs_cuda|skipif\(not (HAS_CUDA|torch\.cuda\.is_available)' \
    tests --include='test_*.py' | sort)
echo "files: ${FILES[*]}"
PER_TEST=()
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout 120)
timeout --kill-after=10 $(($(left) < 180 ? $(left) / 2 : 180)) "$PYTHON" -m pytest -q -rs \
    -p no:cacheprovider "${PER_TEST[@]}" --junitxml "$OUT/pytest_cuda.xml" "${FILES[@]}" |
    tee /tmp/pytest_cuda.txt
echo "pytest exit: ${PIPESTATUS[0]}"

part "4. sampling benchmark"
timeout --kill-after=5 120 "$PYTHON" benchmarks/gpu/bench_gpu.py --assets-only \
    --out-dir "$BENCH_DIR" $([ "$TINY" = 1 ] && echo --tiny)
ROLLOUT=(--model "$BENCH_DIR/assets/policy" --repeats 2 --variants bf16 bf16-eager)
if [ "$TINY" = 1 ]; then
    ROLLOUT+=(--device cpu --prompts 4 --samples 4 --max-new-tokens 16)
else
    ROLLOUT+=(--device cuda --prompts 32 --samples 8 --max-new-tokens 256)
fi
if [ -e "$BENCH_DIR/assets/policy/config.json" ]; then
    timeout --kill-after=5 90 "$PYTHON" benchmarks/rollout.py "${ROLLOUT[@]}" \
        >"$OUT/rollout.log" 2>&1
    echo "rollout exit: $?"
    grep -E "tokens/s|prompts x" "$OUT/rollout.log"
else
    echo "skipped: no assets"
fi

part "5. benchmark"
BENCH=(--out-dir "$BENCH_DIR" --trl-python "$TRL_PYTHON" --trl-ppo-path "$TRL_PPO_PATH")
if [ "$TINY" = 1 ]; then
    BENCH+=(--tiny --device cpu --threads 2)
else
    BENCH+=(--threads 8)
fi
BUDGET=$(($(left) - GPU_CHECK_S - 15))
rm -rf "$BENCH_DIR/table.md" "$BENCH_DIR/results.jsonl" "$BENCH_DIR/logs"
if [ "$BUDGET" -ge 30 ]; then
    timeout --kill-after=10 $((BUDGET + 10)) "$PYTHON" benchmarks/gpu/bench_gpu.py \
        --budget-s "$BUDGET" "${BENCH[@]}"
    echo "benchmark exit: $?"
else
    echo "skipped: $(left) s left"
fi
cp "$BENCH_DIR/table.md" "$OUT/bench_table.md" 2>/dev/null
cp "$BENCH_DIR/results.jsonl" "$OUT/bench_results.jsonl" 2>/dev/null
for log in "$BENCH_DIR"/logs/*.log; do
    [ -e "$log" ] || continue
    echo "=== $log"
    tail -n 200 "$log" | cut -c1-500
done >"$OUT/bench_logs.txt"

part "6. pipeline check"
CHECK=(--quick --runs-dir /tmp/gpu-check-runs)
if [ "$TINY" = 1 ]; then
    CHECK+=(--device cpu model.hidden_size=32 model.num_layers=1 sft.max_steps=20 rm.max_steps=5)
fi
rm -rf /tmp/gpu-check-runs
if [ "$(left)" -gt 30 ]; then
    timeout --kill-after=5 $(($(left) - 10)) "$PYTHON" scripts/gpu_check.py "${CHECK[@]}" \
        >"$OUT/gpu_check.log" 2>&1
    echo "gpu_check exit: $? (log: gpu_check.log)"
    grep -E "pipeline ran|reload ok|Error|error" "$OUT/gpu_check.log" | tail -5
else
    echo "skipped: $(left) s left"
fi

part "summary"
echo "CUDA tests: $(tail -n 1 /tmp/pytest_cuda.txt)"
grep -E "tokens/s" "$OUT/rollout.log" 2>/dev/null
cat "$OUT/bench_table.md" 2>/dev/null
echo "done in $SECONDS s"
exec >&- 2>&-
wait "$TEE" # the log is whole before $OUT is collected
