#!/usr/bin/env bash
# All GPU tests and benchmarks in one call (the GPU runner: H100, offline).
#   run(command="bash scripts/gpu_all.sh", carry=[".gpu"])
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
SUITE_EX="${SUITE_EX:-60}"
step suite 420 python3 -m parity suite --device cuda --max-examples "$SUITE_EX" --json "$OUT/suite.json"
# properties run in the suite above (more examples); pytest runs the other GPU tests
step pytest_gpu 300 python3 -m pytest -q -p no:cacheprovider --ignore=tests/test_properties.py --ignore=tests/test_witnesses.py --ignore=tests/tools tests
[ -f scripts/bench_triton.py ] && step bench_triton 300 python3 scripts/bench_triton.py --out "$OUT/bench_triton.json"
[ -f scripts/gpu_issue5.py ] && step issue5 300 python3 scripts/gpu_issue5.py --out "$OUT"
[ -f parity/optimized/triton/configs/models/deepseek_v4.json ] && step tune 300 python3 -m parity tune \
  --config parity/optimized/triton/configs/models/deepseek_v4.json --quant fp8_block --ep 8 \
  --batch-sizes 1,16,128,1024 --out "$OUT/configs" --device cuda
echo; echo "== summary (exit code, seconds)"
for k in "${!RC[@]}"; do printf '%-14s %s\n' "$k" "${RC[$k]}"; done
python3 - "$OUT/suite.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no suite.json: {e}")
print(f"{'op':20} {'impl':18} {'examples':>8} {'unsup':>6}  verdict")
for r in d["rows"]:
    v = "FAIL " + ",".join(r["failed"]) if r["failed"] else "pass"
    if r["not_run"]:
        v += " NOT RUN: " + ",".join(r["not_run"])
    print(f"{r['op']:20} {r['impl']:18} {r['examples']:8d} {r['unsupported']:6d}  {v}")
print(f"not run here: {len(d['not_run'])}")
PY
