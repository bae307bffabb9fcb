#!/usr/bin/env bash
# The open fused_moe fp8 counterexample on a GPU, in one runner call:
# the fp8 tensor-core dot's behaviour, the original case saved with its outputs, and the verdict
# of `parity case` with and without the operand upcast (logs and tensors: $OUT/diag.tar.gz).
# Run beside `gpu_all.sh nightly 1`.
set -uo pipefail
O="${OUT:-$PWD/gpu-out}"; mkdir -p "$O"; D="$(mktemp -d)/diag"; mkdir -p "$D"
M=scripts/diag_fp8_tiny.meta.json
python3 scripts/diag_fp8_mma.py >"$D/mma.log" 2>&1; echo "mma rc $?"
PARITY_GEN_LEGACY=1 python3 scripts/diag_fp8_tiny.py cuda "$D/A.pt" >"$D/tiny.log" 2>&1
echo "tiny rc $?"
for up in 0 1; do
  PARITY_GEN_LEGACY=1 PARITY_MOE_UPCAST=$up python3 -m parity case --op fused_moe --impl triton \
    --property matches_reference --device cuda --meta @$M >"$D/case_upcast$up.log" 2>&1
  echo "case upcast=$up rc $?"; tail -n 4 "$D/case_upcast$up.log"
done
tar -czf "$O/diag.tar.gz" -C "$(dirname "$D")" diag
