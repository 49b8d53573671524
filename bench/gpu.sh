#!/usr/bin/env bash
# flipctl bench on one CUDA GPU: B/16 at 224 px, bf16 autocast, mask 0 / 50 / 75 %, the largest
# batch that fits, interleaved with open_clip's model of the same network, plus our step compiled
# (the bench's variants on a CUDA device), MFU against the device's dense bf16 peak, which the bench
# looks up from the GPU's name (flip/bench/peaks.py: H200 SXM 989 TFLOP/s, H100 PCIe 756, ...; an
# unknown GPU gets no MFU unless --peak-tflops names its peak). A few minutes end to end:
#
#   bench/gpu.sh                          # batch search, then the bench -> results/bench/b16-cuda-bf16.json
#   bench/gpu.sh --batch-size 1024        # skip the batch search
#   bench/gpu.sh --dry-run                # print the flipctl commands, run nothing
#   bench/gpu.sh -- --compile             # anything after -- goes to `flipctl bench` as is
#
# Options: --model NAME (B/16), --batch-size N, --peak-tflops T (default: looked up), --fraction F (0.6: share of
# the GPU's memory one training step may use in the batch search; the rest holds the other
# models resident during the interleaved timing), --out FILE, --dry-run, -h/--help.
# Environment: FLIPCTL (flipctl), PYTHON (python).
set -euo pipefail

model="B/16"
batch=""
peak=""
fraction=0.6
out="results/bench/b16-cuda-bf16.json"
dry=0
extra=()
FLIPCTL=${FLIPCTL:-flipctl}
PYTHON=${PYTHON:-python}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "error: $*" >&2; exit 2; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || fail "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --model) value "$@"; model="$2"; shift 2 ;;
    --batch-size) value "$@"; batch="$2"; shift 2 ;;
    --peak-tflops) value "$@"; peak="$2"; shift 2 ;;
    --fraction) value "$@"; fraction="$2"; shift 2 ;;
    --out) value "$@"; out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) fail "unknown option $1 (see bench/gpu.sh --help)" ;;
  esac
done
if [ -n "$batch" ] && ! [[ "$batch" =~ ^[0-9]+$ && "$batch" -ge 2 ]]; then
  fail "--batch-size must be an integer >= 2, got '$batch'"
fi
if [ -n "$peak" ] && ! [[ "$peak" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  fail "--peak-tflops must be a positive number, got '$peak'"
fi
[[ "$fraction" =~ ^(0?\.[0-9]+|1(\.0+)?)$ ]] || fail "--fraction must be in (0, 1], got '$fraction'"

common=(--model "$model" --device cuda --precision bf16)
[ -z "$peak" ] || common+=(--peak-tflops "$peak")  # else the bench looks the GPU's peak up by name
run() {
  if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ -z "$batch" ]; then
  # 1. The largest batch whose mask-0 training step (ours, from an empty GPU) fits `fraction` of
  #    the GPU's memory, less 10% for open_clip's step and allocator fragmentation.
  probe="${out%.json}.batch-search.json"
  if [ "$dry" = 1 ]; then
    limit="<fraction x GPU memory>"
  else
    limit=$("$PYTHON" -c 'import sys, torch; print(int(float(sys.argv[1]) * torch.cuda.get_device_properties(0).total_memory))' "$fraction")
  fi
  run "$FLIPCTL" bench "${common[@]}" --mask-ratios 0 --batch-size 64 --steps 1 --warmup 1 --no-split --no-variants \
    --max-batch --memory-limit "$limit" --json "$probe"
  if [ "$dry" = 1 ]; then
    batch="<from the batch search>"
  else
    batch=$("$PYTHON" -c 'import json, sys
found = json.load(open(sys.argv[1]))["max_batch"]["per_ratio"][0]["max_batch"]
print(max(2, int(0.9 * found) // 32 * 32))' "$probe")
    echo "batch size: $batch"
  fi
fi

# 2. The bench: every figure, open_clip interleaved, equal-memory max batch per mask ratio.
run "$FLIPCTL" bench "${common[@]}" --mask-ratios 0,0.5,0.75 --batch-size "$batch" --compare open_clip \
  --max-batch --json "$out" "${extra[@]}"
