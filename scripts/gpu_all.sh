#!/usr/bin/env bash
# All GPU tests and benchmarks, in two calls of the GPU runner (one call holds at most 10 min):
#   run(command="bash scripts/gpu_all.sh tests", carry=[".gpu"])  # suite, golden tables, tune
#   run(command="bash scripts/gpu_all.sh bench", carry=[".gpu"])  # tune large M, parity bench
#   run(command="bash scripts/gpu_all.sh moe", carry=[".gpu"])  # short: tune large M, fused_moe
#     (TUNE_SKIP=1 TS_MOE=1,16: the shipped configs at decode sizes only, about a minute)
#   run(command="bash scripts/gpu_all.sh nightly 1", carry=[".gpu"])  # 1000 ex.: Triton;
#     nightly 2: TileLang + stack; nightly 3: FlashInfer + the reference (three calls);
#     nightly 2,3: both side by side in one call; NIGHTLY_ONLY="triton:fused_moe flashinfer
#     reference" runs those suites of the shards alone (an op, a backend or backend:op)
#   run(command="bash scripts/gpu_all.sh verify", carry=[".gpu"])  # after a Triton change
#   run(command="bash scripts/gpu_all.sh recheck", carry=[".gpu"])  # short: mHC + benchmarks
#   run(command="bash scripts/gpu_all.sh mxptx")  # the PTX mxfp4 decode: tests, A/B, nightly
#   run(command="bash scripts/gpu_all.sh quantprof", carry=[".gpu"])  # short: Nsight Compute of
#     the memory-bound kernels and the tile/variant sweep
# The test jobs run concurrently (one process per backend and op group: TileLang compiles per
# shape and FlashInfer JIT-builds its modules, both CPU-bound, so serial runs hit the limit).
# The tuner runs after them, alone on the GPU, so its timings are not shared with other jobs.
# Logs go to $OUT (or ./gpu-out) as logs.tar.gz (the runner returns at most 8 files); a short
# table is printed last.
set -uo pipefail
exec 3>&1 4>&2  # the call's own output, for finish() (a trap can run inside a redirected fg)
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
LOG="$(mktemp -d)"
[ -f .gpu/activate.sh ] && source .gpu/activate.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the pytest plugin is an entry point: install the checkout offline, without dependencies
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . >"$LOG/install.log" 2>&1 \
  || echo "editable install failed (see install.log)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$LOG/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$LOG/device.txt"
# kernel variants on for this call (parity/optimized/triton/_caps.py): named in the logs and table
echo "PARITY_TRITON_VARIANTS=${PARITY_TRITON_VARIANTS:-}" | tee -a "$LOG/device.txt"
python3 -m parity list >"$LOG/list.txt" 2>&1
T_START=$SECONDS
# the table and the logs, also when the call is cut (SIGTERM from its limit): see finish()
finish() {
trap - EXIT TERM INT
exec 1>&3 2>&4
echo; echo "== jobs (exit code, seconds; 124 = hit its time limit)"
for k in "${JOBS[@]}"; do printf '%-24s %s\n' "$k" "$(cat "$LOG/$k.rc" 2>/dev/null || echo '? not finished')"; done
python3 - "$LOG" <<'PY' | tee "$LOG/summary.txt"
import glob, json, sys
rows = []
for path in sorted(glob.glob(sys.argv[1] + "/[sn]_*.json")):
    rows += json.load(open(path))["rows"]
if rows:
    # compiles: Triton compiles in the suite's process (count/seconds), where its time went
    print(f"{'op':20} {'impl':18} {'examples':>8} {'ex/s':>6} {'compiles':>10} {'unsup':>6}  verdict")
for r in rows:
    v = "FAIL " + ",".join(r["failed"]) if r["failed"] else "pass"
    if r.get("errors"):  # parity itself failed on a unit (a worker died): never a pass
        v = ("FAIL " + ",".join(r["failed"]) + " " if r["failed"] else "") + "ERROR " + ",".join(r["errors"])
    if r["not_run"]:
        v += " NOT RUN: " + ",".join(r["not_run"]) + (" (cut by time)" if r.get("cut") else "")
    if r.get("accepted"):
        v += " (under " + ",".join(r["accepted"]) + ")"
    extra = r.get("cut_examples", 0)  # run by a unit the cut stopped: for ex/s, not judged
    rate = (r["examples"] + extra) / r["seconds"] if r.get("seconds") else 0.0
    n = f"{r['examples']}+{extra}" if extra else str(r["examples"])
    comp = f"{r.get('compiles', 0)}/{r.get('compile_seconds', 0.0):.0f}s"
    print(f"{r['op']:20} {r['impl']:18} {n:>8} {rate:6.1f} {comp:>10} {r['unsupported']:6d}  {v}")
for log in sorted(glob.glob(sys.argv[1] + "/[sn]_*.log")):
    name = log.rsplit("/", 1)[1][:-4]
    if not glob.glob(sys.argv[1] + f"/{name}.json"):
        print(f"{name}: no table (see {name}.log)")
# golden tables: per op and implementation
golden = []
for path in sorted(glob.glob(sys.argv[1] + "/g_*.json")):
    golden += json.load(open(path))["results"]
if golden:
    print(f"\n{'golden: op':20} {'impl':18} {'pass':>5} {'fail':>5} {'unsup':>5} {'not run':>7}")
    by = {}
    for r in golden:
        by.setdefault((r["op"], r["impl"]), []).append(r["status"])
    for (op, impl), st in by.items():
        n = [st.count(s) for s in ("pass", "fail", "unsupported", "not run")]
        print(f"{op:20} {impl:18} {n[0]:5d} {n[1]:5d} {n[2]:5d} {n[3]:7d}")
    for r in golden:
        if r["status"] == "fail":
            print(f"FAIL {r['impl']} {r['row']} {r['prop']}: {r['message'][:160]}")
# parity bench: us eager / graph, and % of copy or TFLOP/s (x weight-read floor)
for path in sorted(glob.glob(sys.argv[1] + "/b_*.json")):
    try:
        rows = json.load(open(path))
    except ValueError:
        print(f"{path.rsplit('/', 1)[1]}: no rows (see its .log)")
        continue
    ceiling, rows = rows[0], rows[1:]

    def leaves(d, pre=""):
        return [x for k, v in d.items() for x in
                (leaves(v, k + ".") if isinstance(v, dict) else [f"{k}={v}"])]

    for r in rows:
        r["variant"] = ",".join(leaves(json.loads(r["variant"]))) if r["variant"] else ""
    name = path.rsplit("/", 1)[1][:-5]
    print(f"\nbench {ceiling['op']} ({name}): copy {ceiling['gbps']:.0f} GB/s; us eager/graph (rate)")
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['variant'][:30]:30} T={r['T']:<5} {r['impl']:24} {r['status']}")
            continue
        g = f"{r['graph_us']:.1f}" if r["graph_us"] is not None else "-"
        rate = ""
        if r["pct_copy"] is not None:
            rate = f"{r['pct_copy']:.0f}% copy"
        if r["tflops"] is not None:
            rate = f"{r['tflops']:.1f} TFLOP/s, {r['x_floor']:.2f}x floor"
        us = f"{r['median_us']:.1f}/{g}"
        print(f"  {r['variant'][:30]:30} T={r['T']:<5} {r['impl']:24} {us:>18} ({rate})")
PY
for f in "$LOG"/pytest_gpu.log; do [ -f "$f" ] && tail -n 4 "$f"; done
tar -C "$LOG" -czf "$OUT/logs.tar.gz" .
ls "$OUT"
}
trap finish EXIT
trap 'exit 124' TERM INT
PHASE="${1:-tests}"   # tests | bench | moe | nightly | verify | recheck | profile | quantprof | mxptx
DEADLINE="${DEADLINE:-570}"  # the benchmarks end by this second of the call
EX="${SUITE_EX:-20}"; EX_JIT="${SUITE_EX_JIT:-8}"
JOBS=()
V4=parity/optimized/triton/configs/models/DeepSeek-V4-Flash.config.json
TUNE_M="${TUNE_M:-1,16,128,1024}"  # the bench phase tunes 8192 (and mxfp4 1024) on its grid
export TRITON_CACHE_DIR="$PWD/.triton-cache"  # shared by the jobs; kept while the runner is warm
# many processes on one GPU: blocks given back (parity._gpu.trim_cache) return whole segments
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
fg() {  # fg CMD...: in the foreground, but as a waited child, so that the call's SIGTERM runs
  # finish() at once (bash defers a trap until a foreground child ends: on 2026-12-05 a cut
  # bench call was killed 5 s later with no logs written)
  "$@" &
  wait $!
}
pt() {  # pt NAME LIMIT CMD...: in the foreground, alone on the GPU; log, rc and seconds kept
  local name=$1 limit=$2 t0=$SECONDS; shift 2
  fg timeout -k 5 "$limit" "$@" >"$LOG/$name.log" 2>&1
  echo "$? $((SECONDS - t0))s" >"$LOG/$name.rc"; JOBS+=("$name")
}
job() {  # job NAME LIMIT CMD...: start in the background with a time limit; rc and seconds kept
  local name=$1 limit=$2; shift 2
  ( t0=$SECONDS; timeout -k 10 "$limit" "$@" >"$LOG/$name.log" 2>&1; echo "$? $((SECONDS - t0))s" \
      >"$LOG/$name.rc" ) &
  JOBS+=("$name")
}
suite() {  # suite NAME LIMIT EXAMPLES SUITE-ARGS...
  local name=$1 limit=$2 ex=$3; shift 3
  # --jobs 1: the suites already run side by side; one process per property unit in each of
  # them exhausted the GPU's memory (2026-12-05, H100)
  job "$name" "$limit" python3 -m parity suite --device cuda --jobs 1 --max-examples "$ex" "$@" \
    --json "$LOG/$name.json"
}
bench() {  # bench NAME LIMIT ARGS...: parity bench rows as JSON in $LOG/NAME.json, alone on the
  # GPU, ending by second DEADLINE (570) of the call (less time left: a shorter limit, or NOT RUN)
  local name=$1 limit=$2 left=$((DEADLINE - (SECONDS - T_START))); shift 2; t0=$SECONDS
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 15 ] && { echo "NOT RUN: time" >"$LOG/$name.rc"; JOBS+=("$name"); return; }
  fg timeout -k 10 "$limit" python3 -m parity bench --graph --json "$@" >"$LOG/$name.json" \
    2>"$LOG/$name.log"
  echo "$? $((SECONDS - t0))s" >"$LOG/$name.rc"; JOBS+=("$name")
}
# fused_moe's three quant modes, as `parity bench --meta` variants
Q='{"dims": {"quant": "none"}}'; F='{"dims": {"quant": "fp8_block"}}'
M='{"dims": {"quant": "mxfp4"}}'
if [ "$PHASE" = verify ]; then
  # One call for the Triton kernels a change touched (VERIFY_OPS): their suites and GPU tests
  # side by side, the scale regime alone after them, then the launch-cost diagnosis.
  OPS="${VERIFY_OPS:-swiglu fp8_quant silu_mul_fp8_quant mxfp4_dequant fp8_block_quant mxfp4_quant route moe_align fused_moe}"
  VLIM="${VERIFY_LIMIT:-240}"
  for op in $OPS; do suite "s_tri_$op" "$VLIM" "$EX" --backend triton --op "$op"; done
  job g_route "$VLIM" python3 -m parity.properties.golden --device cuda --op route \
    --budget $((VLIM - 20)) --json "$LOG/g_route.json"
  VTESTS="${VERIFY_TESTS:-tests/test_launch_cost.py tests/test_fp8_divfree.py tests/test_mxfp4_quant_words.py tests/test_triton_route.py tests/test_triton_fused_moe.py tests/test_triton_new_kernels.py tests/test_scale_regime.py tests/test_compiles.py tests/test_case_gen.py}"
  # shellcheck disable=SC2086  # VTESTS is a list of paths
  job pytest_gpu "$VLIM" python3 -m pytest -q -p no:cacheprovider -n 4 $VTESTS
  wait
  left=$((500 - (SECONDS - T_START))); [ "$left" -gt "${SCALE_BUDGET:-200}" ] && left=${SCALE_BUDGET:-200}
  if [ "$left" -ge 40 ]; then
    t0=$SECONDS
    fg timeout -k 10 $((left + 20)) python3 -m parity.properties.scale --device cuda \
      --budget "$left" --json "$LOG/scale.json" >"$LOG/scale.log" 2>&1
    echo "$? $((SECONDS - t0))s" >"$LOG/scale.rc"
  else
    echo "NOT RUN: time" >"$LOG/scale.rc"
  fi
  JOBS+=(scale); tail -n 45 "$LOG/scale.log" 2>/dev/null
  fg timeout -k 5 45 python3 scripts/launch_cost.py --n 300 --repeats 5 --diagnose \
    >"$LOG/launch_cost.log" 2>&1
  echo "$? launch_cost" >"$LOG/launch_cost.rc"; JOBS+=(launch_cost)
  grep -v "^ \|^$\|Ordered\|List red" "$LOG/launch_cost.log" | head -40
elif [ "$PHASE" = mxptx ]; then
  # One call for the mxfp4 T 1 GEMV decoded in PTX (PARITY_MOE_MX_PTX=1, the GPU default since
  # its nightly passed on the H100, 2026-12-06 17:12): its GPU tests and the device-free case
  # generation's, fused_moe mxfp4 at T 1 / 16 timed off, on, off (drift shows as the two off
  # rows disagreeing), then fused_moe's nightly with it on, split as `nightly 1` splits it.
  # H100 2026-12-06: graph T 1 119.5 -> 107.3 us, T 16 unchanged (544 us once at 17:00, not
  # since); PTX 2 (float32 activations) and PARITY_MOE_MX_BF16_MUL=2 no faster, and
  # mxfp4_dequant_bf16 55.8 -> 55.9 us at T 8192 (both 84% of copy): those stay off.
  pt pytest_gpu 150 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_case_gen.py \
    tests/test_triton_fused_moe.py tests/test_triton_kernels.py \
    -k "ptx or every_byte or join8 or bf16 or case or decode_mxfp4 or dequant"
  for v in 0 1 0; do
    PARITY_MOE_MX_PTX=$v bench "b_mx_ptx${v}_$SECONDS" 50 \
      --op fused_moe --impl triton --tokens 1,16 --warmup-ms 10 --rep-ms 40 --meta "$M"
  done
  PARITY_MOE_MX_PTX=1 suite n_triton_fused_moe_ptx1 "${MXPTX_NIGHTLY:-400}" 1000 \
    --profile nightly --backend triton --op fused_moe --jobs "${NIGHTLY_SPLIT:-9}"
  wait
elif [ "$PHASE" = profile ]; then
  # Where fused_moe's time goes (issue 11, "Done when"): decode tile configs compiled side by
  # side (one process per quant mode), then alone on the GPU: their timings, the per-kernel
  # profile (torch.profiler) at T 1, 16, 8192, the host's share of an eager call (cProfile),
  # Nsight Compute on the decode GEMMs at T 1 (NCU_QUANTS), fused_moe eager beside graph
  # replay, route beside FlashInfer (PROFILE_ROUTE=1).
  job warm_jit 200 python3 scripts/warm_jit.py
  for q in none fp8_block mxfp4; do
    job "swc_$q" 140 python3 scripts/profile_moe.py sweep --compile-only --quant "$q" --budget 120
  done
  wait
  pt sweep_decode 100 python3 scripts/profile_moe.py sweep --budget 90
  grep -A6 "best decode" "$LOG/sweep_decode.log"
  pt prof_kernels 90 python3 scripts/profile_moe.py kernels
  grep "^==" "$LOG/prof_kernels.log"
  pt prof_host 60 python3 scripts/profile_moe.py host --quant none --quant mxfp4
  grep -A22 "^==" "$LOG/prof_host.log" | grep -v "^$" | head -60
  for q in ${NCU_QUANTS:-fp8_block}; do
    pt "ncu_$q" 45 ncu --clock-control none --profile-from-start off -k regex:gemm \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      --section MemoryWorkloadAnalysis python3 scripts/profile_moe.py once --quant "$q" --tokens 1
    grep -E "^  [a-z_]+gemm|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occ|Cycles Per Issued|Theoretical Occ|Block Limit Reg" \
      "$LOG/ncu_$q.log" | head -40
  done
  [ -n "${PROFILE_ROUTE:-}" ] && bench b_route 40 --op route --impl all --tokens 1,16,1024,8192
  bench b_fused_moe_graph 60 --op fused_moe --impl triton --tokens 1,16 --warmup-ms 10 \
    --rep-ms 40 --meta "$Q" --meta "$F" --meta "$M"
elif [ "$PHASE" = quantprof ]; then
  # Where the memory-bound kernels' time goes (issue 11, "Done when"; a short call): Nsight
  # Compute on one call of each at its benchmark shape, the CPU-prepared variants beside the
  # shipped kernels (scripts/profile_quant.py names the launches in order), then the sweep that
  # times those variants with the copy ceiling of the same run
  pt ncu_quant 240 ncu --clock-control none --profile-from-start off --section SpeedOfLight \
    --section WarpStateStats --section InstructionStats --section Occupancy \
    python3 scripts/profile_quant.py
  grep -E "^launch|^  [_a-z0-9]+_kernel|Duration|DRAM Throughput|Compute \(SM\) Throughput|Executed Ipc A|Issue Slots Busy|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Executed Instructions " \
    "$LOG/ncu_quant.log" | head -150
  SWEEP_GRID=small pt sweep 90 python3 scripts/sweep_tiles.py new sigmoid; cat "$LOG/sweep.log"
elif [ "$PHASE" = recheck ]; then
  # A short call after kernel changes (2026-12-05: TileLang mHC grids, the fused_moe decode
  # path, division-free FP8, the word kernel of mxfp4_quant, the new route): the mHC golden
  # tables and their scale cases beside the scale witnesses' GPU test, then benchmarks alone.
  for op in mhc_post mhc_fused_post_pre mhc_pre; do
    job "g_$op" 80 python3 -m parity.properties.golden --device cuda --op "$op" --impl tilelang \
      --budget 70 --json "$LOG/g_$op.json"
  done
  job scale 80 python3 -m parity.properties.scale --device cuda --op mhc_post \
    --op mhc_fused_post_pre --impl tilelang --budget 60 --json "$LOG/scale.json"
  job pytest_gpu 80 python3 -m pytest -q -p no:cacheprovider tests/test_scale_regime.py
  job warm_jit 80 python3 scripts/warm_jit.py  # FlashInfer's JIT builds before route's bench
  wait
  tail -n 12 "$LOG/scale.log"
  for d in 1 0; do  # the decode path (T*k <= 128) and the sorted path, same process kind
    PARITY_MOE_DECODE=$d bench "b_fused_moe_decode$d" 70 --op fused_moe --impl triton \
      --tokens 1,16 --warmup-ms 10 --rep-ms 40 --meta "$Q" --meta "$F" --meta "$M"
  done
  # T 1 on the 16-row dot tile instead of the GEMV (which streamed 1.05 TB/s on the H100)
  PARITY_MOE_DECODE_GEMV=0 bench b_fused_moe_decode_dot 50 --op fused_moe --impl triton \
    --tokens 1 --warmup-ms 10 --rep-ms 40 --meta "$Q" --meta "$F" --meta "$M"
  bench b_route 35 --op route --impl all --tokens 1,16,1024,8192
  for op in fp8_quant silu_mul_fp8_quant fp8_block_quant mxfp4_quant; do
    bench "b_$op" 20 --op "$op" --impl triton --tokens 1,8192
  done
  # the kernel variants that are options until timed: mxfp4_quant's encoder and word kernel,
  # fp8_block_quant's grid order, the fast sigmoid of swiglu and silu_mul_fp8_quant
  SWEEP_GRID=small pt sweep 60 python3 scripts/sweep_tiles.py new sigmoid; cat "$LOG/sweep.log"
elif [ "$PHASE" = tests ]; then
  # the reference on CUDA in two jobs: one took more than 300 s for its 123 units (2026-12-05)
  suite s_ref_a 300 "$EX" --backend torch --op swiglu --op fp8_quant --op silu_mul_fp8_quant \
    --op mxfp4_quant --op mxfp4_dequant --op fp8_block_quant --op route --op moe_align \
    --op sinkhorn
  suite s_ref_b 300 "$EX" --backend torch --op fused_moe --op mhc_pre --op mhc_post \
    --op mhc_fused_post_pre --op mhc_head --op decoder_stack
  suite s_tri_elem 300 "$EX" --backend triton --op swiglu --op fp8_quant \
    --op silu_mul_fp8_quant --op mxfp4_dequant --op moe_align
  suite s_tri_new 300 "$EX" --backend triton --op fp8_block_quant --op mxfp4_quant --op route
  suite s_tri_moe 300 "$EX" --backend triton --op fused_moe
  suite s_stack 300 "$EX_JIT" --backend stack
  for op in sinkhorn mhc_pre mhc_post mhc_fused_post_pre mhc_head; do
    suite "s_tl_$op" 300 "$EX_JIT" --backend tilelang --op "$op"
  done
  for op in swiglu route mhc_pre mhc_post; do
    suite "s_fi_$op" 300 "$EX_JIT" --backend flashinfer --op "$op"
  done
  # the golden tables (parity/properties/golden.py): every implementation at the path
  # thresholds and their neighbours, odd shapes, FlashInfer's limits; one job per op
  for op in mhc_pre mhc_post mhc_fused_post_pre mhc_head sinkhorn swiglu route; do
    job "g_$op" 300 python3 -m parity.properties.golden --device cuda --op "$op" --budget 280 \
      --json "$LOG/g_$op.json"
  done
  job pytest_gpu 300 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_gpu_backends.py \
    tests/test_launch_cost.py tests/test_fp8_divfree.py \
    tests/test_triton_kernels.py tests/test_triton_fused_moe.py tests/test_compiles.py tests/test_case_gen.py tests/tools
  # the tuner's candidates checked (so compiled into the shared Triton cache) meanwhile
  for q in mxfp4 fp8_block none; do
    job "tunecheck_$q" 300 python3 -m parity tune --check-only --config "$V4" --ep 8 \
      --quant "$q" --batch-sizes "$TUNE_M" --grid small --device cuda
  done
  wait
  # the scale regime (parity/properties/scale.py, docs/scale.md): cases past 2**31 and 2**32
  # flat elements, up to ~21 GiB each, so alone on the GPU after the suites
  left=$((540 - (SECONDS - T_START))); [ "$left" -gt 230 ] && left=230
  if [ "$left" -ge 60 ]; then
    t0=$SECONDS
    fg timeout -k 10 $((left + 20)) python3 -m parity.properties.scale --device cuda \
      --budget "$left" --json "$LOG/scale.json" >"$LOG/scale.log" 2>&1
    echo "$? $((SECONDS - t0))s" >"$LOG/scale.rc"
  else
    echo "NOT RUN: time" >"$LOG/scale.rc"
  fi
  JOBS+=(scale); tail -n 40 "$LOG/scale.log" 2>/dev/null
  # the tuner alone on the GPU: DeepSeek-V4-Flash with 8-way expert parallelism (E 32, N 2048,
  # the file the issue's H 7168 benchmark layer also reads), the three quant modes one by one
  TUNE_LIMIT="${TUNE_LIMIT:-$((560 - (SECONDS - T_START)))}"
  for q in mxfp4 fp8_block none; do
    left=$((TUNE_LIMIT / 3)); t0=$SECONDS
    [ "$left" -lt 20 ] && { echo "NOT RUN: time" >"$LOG/tune_$q.rc"; JOBS+=("tune_$q"); continue; }
    fg timeout -k 10 "$left" python3 -m parity tune \
      --config "$V4" --ep 8 --quant "$q" --batch-sizes "$TUNE_M" --grid small --merge \
      --out parity/optimized/triton/configs --device cuda >"$LOG/tune_$q.log" 2>&1
    echo "$? $((SECONDS - t0))s" >"$LOG/tune_$q.rc"; JOBS+=("tune_$q")
    tail -n 3 "$LOG/tune_$q.log"
  done
  mkdir -p "$LOG/configs" && cp parity/optimized/triton/configs/*.json "$LOG/configs/"
elif [ "$PHASE" = nightly ]; then
  # The nightly profile (1000 examples a property) for every GPU implementation, in three calls
  # (issue 11, section 4): `nightly 1` Triton, `nightly 2` TileLang and the decoder stack,
  # `nightly 3` FlashInfer and the reference's own nightly test. One suite job per (backend,
  # op), so a job cut at its limit loses only its own rows; the table prints examples/s.
  SHARD="${2:-1}"; LIM="${NIGHTLY_LIMIT:-540}"
  only() {  # only BACKEND OP; NIGHTLY_ONLY="op backend backend:op ...": those alone (a rerun)
    local o=" ${NIGHTLY_ONLY:-} "
    [ -z "${NIGHTLY_ONLY:-}" ] || [[ $o == *" $2 "* || $o == *" $1 "* || $o == *" $1:$2 "* ]]
  }
  nsuite() {  # nsuite BACKEND OP...; NJOBS=N: each suite's properties in N processes
    local b=$1; shift  # (`suite --jobs`; the last of suite()'s --jobs wins)
    for op in "$@"; do
      only "$b" "$op" && suite "n_${b}_$op" "$LIM" 1000 --profile nightly --backend "$b" \
        --op "$op" ${NJOBS:+--jobs "$NJOBS"}
    done
  }
  for shard in ${SHARD//,/ }; do  # "2,3": two shards side by side in one call
  case "$shard" in
    1) nsuite triton swiglu fp8_quant silu_mul_fp8_quant mxfp4_dequant moe_align fp8_block_quant \
         mxfp4_quant
       # route and fused_moe are compile-bound (566 and 511 Triton compiles, 256 s and 193 s of
       # a 380 s call on the H100, 2026-12-05): their properties in several processes each,
       # so their compiles use more cores. H100 2026-12-06: route's nightly in 4 took 420 s
       # beside the others; fused_moe's in 9 (one a property) 291 s alone; in 8 beside the
       # others (before parity._gpu.trim_cache) the GPU ran out of memory
       NJOBS="${NIGHTLY_SPLIT_ROUTE:-4}" nsuite triton route
       NJOBS="${NIGHTLY_SPLIT:-9}" nsuite triton fused_moe ;;
    2) # TileLang's suites are compile-bound (one TileLang compile a new key, in every process):
       # their properties in several processes each (H100 2026-12-06: mhc_post's nightly with
       # the hidden size dynamic in 8 processes, 51 s)
       NJOBS="${NIGHTLY_SPLIT_TL:-3}" nsuite tilelang sinkhorn mhc_pre mhc_post \
         mhc_fused_post_pre mhc_head
       # the stack's 16 units (two implementations) in one process finished 5 in 420 s (H100
       # 2026-12-06: matches_reference 338 s, three reference stacks a case; the others 12-29 s)
       NJOBS="${NIGHTLY_SPLIT_STACK:-4}" nsuite stack decoder_stack ;;
    3) nsuite flashinfer swiglu route mhc_pre mhc_post
       # no false alarm: every property on the reference itself at the nightly budget, its cuda
       # half (the cpu half is a CPU machine's: 246 tests together ran 65 in 250 s on the H100)
       # H100 2026-12-06 17:33: 66 of its 123 tests in 420 s alone, so it runs in two calls,
       # NIGHTLY_REF_K="cuda and (decoder_stack or fused_moe or mhc)" and then "cuda and not
       # (decoder_stack or fused_moe or mhc)"; -v names each test's verdict in the log
       only pytest reference && job nightly_ref "$LIM" env PARITY_NIGHTLY=1 PARITY_FAIL_LOG="$LOG/nightly_ref_failures.txt" \
         python3 -m pytest -v -p no:cacheprovider -n 8 -k "${NIGHTLY_REF_K:-cuda}" \
         tests/test_reference_nightly.py ;;
    *) echo "nightly shard must be 1, 2 or 3 (or a list: 2,3)"; exit 2 ;;
  esac
  done
  wait
elif [ "$PHASE" = bench ] || [ "$PHASE" = moe ]; then
  # moe: the tuner and fused_moe's benchmark alone (TS_MOE tokens), a short call
  # FlashInfer's JIT modules built while the tuner compiles (its first use of dsv3 routing took
  # more than a 35 s benchmark limit on the H100)
  [ "$PHASE" = bench ] && job warm_jit 200 python3 scripts/warm_jit.py
  # large-M tuner entries merged into the shipped files (parity/optimized/triton/configs), so the
  # benchmark below runs with them: compiled side by side first, then timed one mode at a time
  # TUNE_SKIP=1: no mode tuned, the shipped configs timed as they are (after a kernel change)
  TQ="mxfp4 fp8_block none"; [ -n "${TUNE_SKIP:-}" ] && TQ=""
  CFG=parity/optimized/triton/configs
  large_m() { if [ "$1" = mxfp4 ]; then echo "${TUNE_MX_M:-1024,8192}"; else echo 8192; fi; }
  for q in $TQ; do
    m=$(large_m "$q")
    job "tunecheck_$q" "${TUNECHECK_LIMIT:-110}" python3 -m parity tune --check-only --config "$V4" --ep 8 \
      --quant "$q" --batch-sizes "$m" --grid large --device cuda
  done
  wait
  for q in $TQ; do
    m=$(large_m "$q")
    t0=$SECONDS
    lim=${TUNE_LIM:-40}; [ "$q" = mxfp4 ] && lim=$((lim * 3 / 2))
    fg timeout -k 10 "$lim" python3 -m parity tune --config "$V4" --ep 8 --quant "$q" --batch-sizes "$m" \
      --grid large --merge --out "$CFG" --device cuda >"$LOG/tune_$q.log" 2>&1
    echo "$? $((SECONDS - t0))s" >"$LOG/tune_$q.rc"; JOBS+=("tune_$q")
    tail -n 3 "$LOG/tune_$q.log"
  done
  mkdir -p "$LOG/configs" && cp "$CFG"/*.json "$LOG/configs/"
  # parity bench, one op at a time alone on the GPU: every implementation and peer beside the
  # reference, the copy ceiling measured in each run, CUDA-graph replay beside eager
  TS=1,16,128,1024,8192
  H4='{"H": 4096}'; H7='{"H": 7168}'; PLAIN='{"options": {"limit": null}}'
  # DeepSeek-V4-like layer (H 7168, N 2048, 32 experts, top-8), three quant modes
  bench b_fused_moe 150 --op fused_moe --impl torch_dequant_mm --impl triton \
    --tokens "${TS_MOE:-$TS}" --warmup-ms 10 --rep-ms 50 --meta "$Q" --meta "$F" --meta "$M"
  # the mxfp4 decode GEMMs' byte-wise loads (the default until 2026-12-06) beside the run above
  PARITY_MOE_MX_VEC=0 bench b_fused_moe_mxbyte 60 --op fused_moe \
    --impl triton --tokens 1,16 --warmup-ms 10 --rep-ms 50 --meta "$M"
  if [ "$PHASE" = bench ]; then
    bench b_route 40 --op route --impl reference --impl all --tokens "$TS"
    # the memory-bound ops at the two ends (the % of copy target is at T 8192), then the rest
    bench b_swiglu 30 --op swiglu --impl reference --impl all --tokens 1,8192 --meta '{}' \
      --meta "$PLAIN"
    for op in fp8_quant silu_mul_fp8_quant mxfp4_dequant fp8_block_quant mxfp4_quant moe_align; do
      bench "b_$op" 25 --op "$op" --impl reference --impl all --tokens 1,8192
    done
    for op in mhc_post mhc_pre mhc_fused_post_pre mhc_head; do  # hc 4, H 4096 and 7168
      bench "b_$op" 60 --op "$op" --impl reference --impl all --tokens 1,4,16,128,1024,8192 \
        --meta "$H4" --meta "$H7"
    done
    bench b_sinkhorn 30 --op sinkhorn --impl reference --impl all --tokens "$TS"
    # host time of one eager call at T=1 (the launch-cost target), beside FlashInfer's silu_and_mul
    if [ $((DEADLINE - (SECONDS - T_START))) -ge 40 ]; then
      fg timeout -k 10 40 python3 scripts/launch_cost.py >"$LOG/launch_cost.log" 2>&1
      echo "$? launch_cost" >"$LOG/launch_cost.rc"; tail -n 15 "$LOG/launch_cost.log"
    else
      echo "NOT RUN: time" >"$LOG/launch_cost.rc"
    fi
    JOBS+=(launch_cost)
  fi
  # one file (the runner returns at most 8): {"b_op": rows} of every run that printed rows
  python3 - "$LOG" "$OUT/bench.json" <<'PY'
import glob, json, sys
out = {}
for path in sorted(glob.glob(sys.argv[1] + "/b_*.json")):
    try:
        out[path.rsplit("/", 1)[1][:-5]] = json.load(open(path))
    except ValueError:
        pass
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
else
  echo "unknown phase: $PHASE"; exit 2
fi
