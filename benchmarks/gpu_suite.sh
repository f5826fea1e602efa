#!/usr/bin/env bash
# The GPU benchmarks in one command, for one H100/H200 (about 8 minutes):
#   1. benchmarks/layer_speed.py: VeLoRA's layer against F.linear and peft's, LLaMA-7B's GPU shapes;
#   2. benchmarks/step_speed.py's GPU shapes, where that benchmark exists;
#   3. memory at two shapes, all six methods, bf16 (memory-7b: LLaMA-7B's shape at 8x512 tokens, and
#      Llama-3.2-3B's at 4x768, peft's MetaMathQA shape, docs/memory-references.md): a real run's tracked step, torch.cuda.max_memory_allocated and
#      max_memory_reserved and the CUDA context (used less reserved) beside velora-bench fit's
#      allocated and reserved predictions for this card's family (benchmarks/memory_vs_fit.py).
# Each writes JSON naming the card into benchmarks/results/ (or --out), and this script a summary.
#
#   benchmarks/gpu_suite.sh [--out DIR] [--wheels DIR] [--skip-cuda] [--dry-run]
#
# --wheels DIR: install the wheels in DIR first (into /tmp/velora-site, no index: packages the GPU
#   machine lacks, such as bitsandbytes and pydantic, carried beside the repository).
# --skip-cuda: the CPU-checkable parts only (the same scripts, the CPU shapes, memory on the tiny
#   model), into a temporary folder unless --out is given: a check of this script without a GPU.
# --dry-run: print what would be measured, and run the CPU side of the memory step (fit's predictions
#   at both shapes, benchmarks/memory_vs_fit.py --predict-only) into a temporary folder unless --out.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=""
WHEELS=""
SKIP_CUDA=0
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --skip-cuda) SKIP_CUDA=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see the header of this file)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
if [[ -z "$OUT" ]]; then
  if [[ $SKIP_CUDA == 1 || $DRY_RUN == 1 ]]; then OUT="$(mktemp -d)"; else OUT="benchmarks/results"; fi
fi
# The memory step's two shapes: memory_vs_fit.py arguments after --preset memory-7b.
SHAPES=("--model llama-7b --seq-len 512 --micro-batch 8" "--model llama-3.2-3b --seq-len 768 --micro-batch 4")
mkdir -p "$OUT"

if [[ -n "$WHEELS" ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/velora-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/velora-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ $DRY_RUN == 1 ]]; then
  echo "gpu_suite --dry-run: on a card this measures, into $OUT:"
  echo "  layer_speed: benchmarks/layer_speed.py (VeLoRA's layer against F.linear and peft's)"
  echo "  step_speed: benchmarks/step_speed.py (where it exists)"
  for shape in "${SHAPES[@]}"; do
    echo "  memory_vs_fit --preset memory-7b $shape: full lora qlora velora+full velora+lora velora+qlora;"
    echo "    per method a two-step run's tracked peak, max_memory_allocated, max_memory_reserved and the"
    echo "    CUDA context, beside fit's allocated and reserved predictions for the card's family"
  done
  echo "Running the CPU side now (fit's predictions, hopper constants):"
  for shape in "${SHAPES[@]}"; do
    # shellcheck disable=SC2086  # $shape is a list of arguments
    "$PY" benchmarks/memory_vs_fit.py --preset memory-7b $shape --predict-only --out "$OUT"
  done
  echo "gpu_suite --dry-run: predictions in $OUT"
  exit 0
fi

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
if [[ $SKIP_CUDA == 0 ]]; then
  for shape in "${SHAPES[@]}"; do
    # shellcheck disable=SC2086  # $shape is a list of arguments
    step "memory_vs_fit_${shape// /_}" "$PY" benchmarks/memory_vs_fit.py --preset memory-7b $shape \
      "${MEMORY_ARGS[@]}" --out "$OUT"
  done
else
  step memory_vs_fit "$PY" benchmarks/memory_vs_fit.py --preset memory-7b "${MEMORY_ARGS[@]}" --out "$OUT"
fi

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
