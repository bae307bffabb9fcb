#!/usr/bin/env bash
# A/B timing of this tree against an older checkout, on one GPU in one call: each benchmark runs
# old, new, old again (drift shows as the two old rows disagreeing), alone on the GPU, and a
# table of median us (eager / graph) is printed last. Rows as JSON in $OUT/ab.json.
#   bash scripts/ab_bench.sh OLD_DIR [LIMIT_S]      # e.g. OLD_DIR a `git archive` of cdce4ba
set -uo pipefail
OLD=$(cd "$1" && pwd); NEW=$PWD; LIM=${2:-200}; T0=$SECONDS
O="${OUT:-$PWD/gpu-out}"; D=$(mktemp -d); mkdir -p "$O"
Q='{"dims":{"quant":"none"}}'; F='{"dims":{"quant":"fp8_block"}}'
M='{"dims":{"quant":"mxfp4"}}'
BENCHES=(
  "fused_moe|--op fused_moe --impl triton --tokens 1,16 --warmup-ms 10 --rep-ms 50 --meta $Q --meta $F --meta $M"
  "route|--op route --impl triton --tokens 1,16,128,1024,8192"
  "swiglu|--op swiglu --impl triton --tokens 1,8192"
)
n=0
for b in "${BENCHES[@]}"; do
  name=${b%%|*}; args=${b#*|}
  for side in old new old2; do
    [ $((SECONDS - T0)) -ge "$LIM" ] && { echo "NOT RUN: $name $side (time)"; continue; }
    dir=$OLD; [ "$side" = new ] && dir=$NEW
    # shellcheck disable=SC2086  # args split into words: the JSON metas hold no spaces
    (cd "$dir" && PYTHONPATH="$dir" timeout -k 5 "${AB_RUN_LIMIT:-75}" python3 -m parity bench --device cuda --graph \
      --json $args >"$D/$name.$side.json" 2>"$D/$name.$side.log")
    echo "$name $side rc $?"; n=$((n + 1))
  done
done
python3 - "$D" "$O/ab.json" <<'PY'
import glob, json, os, sys
rows = {}
for p in sorted(glob.glob(sys.argv[1] + "/*.json")):
    name, side = os.path.basename(p)[:-5].split(".")
    try:
        data = json.load(open(p))
    except ValueError:
        continue
    for r in data:
        if r.get("T") is None:
            continue
        key = (name, r.get("variant", ""), r["T"], r["impl"])
        rows.setdefault(key, {})[side] = (r.get("median_us"), r.get("graph_us"))
json.dump([[*k, v] for k, v in rows.items()], open(sys.argv[2], "w"), indent=1)
f = lambda v: "-" if not v or v[0] is None else f"{v[0]:.1f}/{v[1] or 0:.1f}"
print(f"{'op':10} {'variant':28} {'T':>5}  {'old':>15} {'new':>15} {'old again':>15}")
for (name, var, t, impl), v in rows.items():
    print(f"{name:10} {var[:28]:28} {t:>5}  {f(v.get('old')):>15} {f(v.get('new')):>15} "
          f"{f(v.get('old2')):>15}")
PY
