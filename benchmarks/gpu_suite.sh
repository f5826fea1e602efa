#!/usr/bin/env bash
# The GPU benchmarks in one command, for one H100/H200 (about 8 minutes):
#   1. benchmarks/layer_speed.py: VeLoRA's layer against F.linear and peft's, LLaMA-7B's GPU shapes;
#   2. benchmarks/step_speed.py's GPU shapes, where that benchmark exists;
#   3. memory-7b (LLaMA-7B's shape, 8x512 tokens, bf16, all six methods): the tracker's peak of a real
#      step against velora-bench fit's prediction and against torch.cuda.max_memory_allocated.
# Each writes JSON naming the card into benchmarks/results/ (or --out), and this script a summary.
#
#   benchmarks/gpu_suite.sh [--out DIR] [--wheels DIR] [--skip-cuda]
#
# --wheels DIR: install the wheels in DIR first (into /tmp/velora-site, no index: packages the GPU
#   machine lacks, such as bitsandbytes and pydantic, carried beside the repository).
# --skip-cuda: the CPU-checkable parts only (the same scripts, the CPU shapes, memory on the tiny
#   model), into a temporary folder unless --out is given: a check of this script without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=""
WHEELS=""
SKIP_CUDA=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --skip-cuda) SKIP_CUDA=1; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see the header of this file)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
if [[ -z "$OUT" ]]; then
  if [[ $SKIP_CUDA == 1 ]]; then OUT="$(mktemp -d)"; else OUT="benchmarks/results"; fi
fi
mkdir -p "$OUT"

if [[ -n "$WHEELS" ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/velora-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/velora-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ $SKIP_CUDA == 0 ]]; then
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_suite.sh: no CUDA device here (--skip-cuda checks the rest)")'
  CARD="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
  MEMORY_ARGS=(--device cuda)
else
  CARD="cpu (--skip-cuda)"
  MEMORY_ARGS=(--device cpu --model tiny --seq-len 64 --micro-batch 2)
fi
echo "gpu_suite: $CARD, results in $OUT"
START=$(date +%s)
declare -A SECONDS_OF

step() {  # step NAME COMMAND...: run it, time it, stop the suite if it fails
  local name="$1"; shift
  local t0; t0=$(date +%s)
  echo "== $name: $*"
  "$@"
  SECONDS_OF[$name]=$(( $(date +%s) - t0 ))
}

step layer_speed "$PY" benchmarks/layer_speed.py --out "$OUT"
if [[ -f benchmarks/step_speed.py ]]; then
  step step_speed "$PY" benchmarks/step_speed.py --out "$OUT"
else
  echo "== step_speed: benchmarks/step_speed.py is not in this checkout; skipped"
fi
step memory_vs_fit "$PY" benchmarks/memory_vs_fit.py --preset memory-7b "${MEMORY_ARGS[@]}" --out "$OUT"

TOTAL=$(( $(date +%s) - START ))
SUMMARY_ARGS=()
for name in "${!SECONDS_OF[@]}"; do SUMMARY_ARGS+=("$name=${SECONDS_OF[$name]}"); done
"$PY" - "$OUT" "$CARD" "$TOTAL" "${SUMMARY_ARGS[@]}" <<'PY'
import json, re, sys
from pathlib import Path

out, card, total, *steps = sys.argv[1:]
slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")[:60]
summary = {
    "device": card,
    "total_s": int(total),
    "steps_s": {k: int(v) for k, v in (s.split("=", 1) for s in steps)},
    "files": sorted(p.name for p in Path(out).glob("*.json") if not p.name.startswith("gpu_suite")),
}
path = Path(out) / f"gpu_suite_{slug}.json"
path.write_text(json.dumps(summary, indent=2))
print(f"gpu_suite: {total} s in all; wrote {path}")
PY
