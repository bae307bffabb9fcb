#!/usr/bin/env bash
# parity's own Triton fp8_block_quant, mxfp4_quant and route on the GPU, in ONE runner call:
#   run(command="source .gpu/activate.sh && bash scripts/gpu_new_kernels.sh", carry=[".gpu"])
# 1. the property suite of each op against its triton impl on cuda, the three ops concurrently
#    (one process each, SUITE_LIMIT seconds each, SUITE_EX examples per property);
# 2. then, alone on the GPU, scripts/bench_new_kernels.py (bandwidth vs copy, route vs
#    FlashInfer's fused_topk_deepseek).
# Logs go to $OUT (or ./gpu-out) as new_kernels_logs.tar.gz plus the bench JSON; a short table
# is printed last.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
LOG="$(mktemp -d)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="$PWD/.triton-cache"
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . >"$LOG/install.log" 2>&1 \
  || echo "editable install failed (see install.log)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$LOG/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$LOG/device.txt"
date -u | tee -a "$LOG/device.txt"
EX="${SUITE_EX:-100}"; LIMIT="${SUITE_LIMIT:-240}"
JOBS=()
for op in fp8_block_quant mxfp4_quant route; do
  ( t0=$SECONDS
    timeout "$LIMIT" python3 -m parity suite --device cuda --impl triton --op "$op" \
      --max-examples "$EX" --json "$LOG/s_$op.json" >"$LOG/s_$op.log" 2>&1
    echo "$? $((SECONDS - t0))s" >"$LOG/s_$op.rc" ) &
  JOBS+=("s_$op")
done
wait
t0=$SECONDS
timeout "${BENCH_LIMIT:-200}" python3 scripts/bench_new_kernels.py --out "$LOG/bench_new_kernels.json" \
  >"$LOG/bench.log" 2>&1
echo "$? $((SECONDS - t0))s" >"$LOG/bench.rc"; JOBS+=(bench)
cp "$LOG/bench_new_kernels.json" "$OUT/" 2>/dev/null
echo; echo "== jobs (exit code, seconds; 124 = hit its time limit)"
for k in "${JOBS[@]}"; do printf '%-22s %s\n' "$k" "$(cat "$LOG/$k.rc" 2>/dev/null || echo '?')"; done
python3 - "$LOG" <<'PY' | tee "$LOG/summary.txt"
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/s_*.json")):
    for r in json.load(open(path))["rows"]:
        v = "FAIL " + ",".join(r["failed"]) if r["failed"] else "pass"
        if r["not_run"]:
            v += " NOT RUN: " + ",".join(r["not_run"])
        print(f"{r['op']:16} {r['impl']:8} {r['examples']:6d} ex {r['unsupported']:4d} unsup  {v}")
for log in sorted(glob.glob(sys.argv[1] + "/s_*.log")):
    name = log.rsplit("/", 1)[1][:-4]
    if not glob.glob(sys.argv[1] + f"/{name}.json"):
        print(f"{name}: no table; log tail:")
        print("".join(open(log).readlines()[-15:]))
PY
grep -h -B2 -A12 "Falsifying\|FAIL\|Error" "$LOG"/s_*.log | head -60
sed -n '/^summary/,$p' "$LOG/bench.log"
grep -A8 Traceback "$LOG/bench.log" | head -30
tar -C "$LOG" -czf "$OUT/new_kernels_logs.tar.gz" .
ls "$OUT"
