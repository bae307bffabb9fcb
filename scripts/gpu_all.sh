#!/usr/bin/env bash
# All GPU tests and benchmarks in one call (the GPU runner: H100, offline).
#   run(command="bash scripts/gpu_all.sh tests", carry=[".gpu"]); then "... bench"
# Logs go to $OUT (or ./gpu-out); a short table is printed last.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
[ -f .gpu/activate.sh ] && source .gpu/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the pytest plugin is an entry point: install the checkout offline, without dependencies
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . >"$OUT/install.log" 2>&1 \
  || echo "editable install failed (see install.log)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
python3 -m parity list > "$OUT/list.txt" 2>&1
declare -A RC
step() {  # step NAME TIMEOUT CMD...: run with a time limit, keep the log and the exit code
  local name=$1 limit=$2; shift 2
  echo "== $name"; local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; RC[$name]="$? $((SECONDS - t0))s"
  tail -n 5 "$OUT/$name.log"
}
PHASE="${1:-all}"   # tests | bench | all (one runner call holds at most 10 minutes)
EX="${SUITE_EX:-20}"; EX_JIT="${SUITE_EX_JIT:-6}"
if [ "$PHASE" != bench ]; then
  # TileLang and FlashInfer compile per shape (seconds each): fewer examples for them
  step suite 260 python3 -m parity suite --device cuda --max-examples "$EX" \
    --backend torch --backend triton --json "$OUT/suite.json"
  step suite_jit 200 python3 -m parity suite --device cuda --max-examples "$EX_JIT" \
    --backend tilelang --backend flashinfer --json "$OUT/suite_jit.json"
  step pytest_gpu 120 python3 -m pytest -q -p no:cacheprovider -x tests/test_gpu_backends.py \
    tests/test_triton_kernels.py tests/test_triton_fused_moe.py
fi
if [ "$PHASE" != tests ]; then
  step bench_triton 280 python3 scripts/bench_triton.py --out "$OUT/bench_triton.json"
  [ -f scripts/gpu_issue5.py ] && step issue5 200 python3 scripts/gpu_issue5.py --out "$OUT"
  step tune 100 python3 -m parity tune --config parity/optimized/triton/configs/models/DeepSeek-V4-Flash.config.json \
    --quant fp8_block --ep 8 --batch-sizes 1,16,128,1024 --grid small --out "$OUT/configs" --device cuda
fi
echo; echo "== summary (exit code, seconds)"
for k in "${!RC[@]}"; do printf '%-14s %s\n' "$k" "${RC[$k]}"; done
python3 - "$OUT/suite.json" "$OUT/suite_jit.json" <<'PY'
import json, sys
print(f"{'op':20} {'impl':18} {'examples':>8} {'unsup':>6}  verdict")
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except Exception as e:
        print(f"no {path}: {e}")
        continue
    for r in d["rows"]:
        v = "FAIL " + ",".join(r["failed"]) if r["failed"] else "pass"
        if r["not_run"]:
            v += " NOT RUN: " + ",".join(r["not_run"])
        print(f"{r['op']:20} {r['impl']:18} {r['examples']:8d} {r['unsupported']:6d}  {v}")
PY
