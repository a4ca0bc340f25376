#!/usr/bin/env bash
# One prepared GPU slot (about 10 minutes of one GPU on a fresh machine, notes/issue6-gpu.md):
#   0. restore trained runs carried in $RESTORE (bf16 weights split in parts + run files) into
#      the cache, so a section reuses them instead of training again,
#   L. (LEARN_RECIPE set) `bench learn`: $SCALE's base model with that recipe, ID EM at
#      LEARN_POINTS fractions of training (the EM-against-tokens-and-seconds curve),
#   1. evaluation-speed benchmark (static CUDA-graph decoding vs the dynamic decoder),
#   2. (SECTION=1, the default) section 02 (base model: data, training unless restored,
#      evaluation) at $SCALE via papermill,
#   3. training-throughput benchmarks of the paper model (eager and compiled),
#   4. the trained weights (bf16, split in parts) and every log, into $OUT.
# Each stage runs only while enough of the slot is left (DEADLINE seconds from the start).
# Python packages the machine lacks (papermill, ipykernel, ...) travel as wheels in .whl/.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEADLINE=${DEADLINE:-460}
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if [ -z "${NO_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
exec > >(tee "$OUT/log.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
$PY -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
CACHE=${CACHE:-/tmp/cache}; SCALE=${SCALE:-gpu}; RESTORE=${RESTORE:-runs/gpu-slot-restore}
SECTIONS=$OUT/sections; DEV=${BENCH_DEVICE:-cuda}
mkdir -p "$CACHE"

echo "== stage 0: restore carried runs ($(left)s left)"
RESTORED=""
for d in "$RESTORE"/run-*; do
  [ -d "$d" ] || continue
  run=$(basename "$d"); mkdir -p "$CACHE/$run"
  cp "$d"/*.json* "$CACHE/$run/"
  cat "$d"/*.part* > /tmp/w.bf16
  $PY -c "import sys, torch; from safetensors.torch import load_file, save_file; save_file({k: v.float().contiguous() for k, v in load_file('/tmp/w.bf16').items()}, sys.argv[1])" "$CACHE/$run/model.safetensors"
  RESTORED="$RESTORED $run"; echo "restored $run"
done

LEARN_RECIPE=${LEARN_RECIPE:-}
if [ -n "$LEARN_RECIPE" ]; then
  echo "== stage L: bench learn $LEARN_RECIPE at $SCALE ($(left)s left)"
  timeout $(( $(left) - ${LEARN_RESERVE:-120} )) $PY -m tinytrace bench learn --scale "$SCALE" \
    --recipe "$LEARN_RECIPE" --points "${LEARN_POINTS:-5}" --minutes "${LEARN_MINUTES:-4}" \
    --eval-limit "${LEARN_EVAL:-512}" --cache-dir "$CACHE" --out "$CACHE/run-learn-$LEARN_RECIPE" \
    --no-progress --json | tail -1 | tee "$OUT/bench_learn.json"
  echo "stage L exit ${PIPESTATUS[0]} after $(( $(date +%s) - T0 ))s"
fi
FIRST_RUN=$(ls -d "$CACHE"/run-*/ 2>/dev/null | head -1); FIRST_RUN=${FIRST_RUN%/}

echo "== stage 1: evaluation speed ($(left)s left)"
if [ -n "$FIRST_RUN" ]; then
  timeout 60 $PY -m tinytrace bench eval --checkpoint "$FIRST_RUN" --data data/tinytracing \
    --config base --limit 1024 --batch-size 256 --modes static --device $DEV --json | tail -1 | tee -a "$OUT/bench_eval.jsonl"
fi

if [ "${SECTION:-1}" = 1 ]; then
  echo "== stage 2: section 02 at $SCALE scale ($(left)s left)"
  timeout $(( $(left) - 25 )) $PY -m tinytrace notebooks run --scale "$SCALE" --only 02 \
    --out "$SECTIONS" --cache-dir "$CACHE"
  echo "stage 2 exit $? after $(( $(date +%s) - T0 ))s"
fi
for f in "$SECTIONS"/.*.log "$SECTIONS"/.*.failed.ipynb; do  # a failure's traces, visible names
  [ -e "$f" ] && cp "$f" "$SECTIONS/failed_$(basename "$f" | sed 's/^\.//')"
done
# every run log, config and evaluation record (small) in one archive
(cd "$CACHE" && tar czf "$OUT/artifacts.tgz" --exclude='state*' --exclude='*.safetensors' \
  --exclude='*.parquet' --exclude='*.bin' --exclude='*.npy' . ) || true

echo "== stage 3: static vs dynamic decoding, training throughput ($(left)s left)"
if [ -n "$FIRST_RUN" ] && [ "$(left)" -gt 60 ]; then
  timeout 50 $PY -m tinytrace bench eval --checkpoint "$FIRST_RUN" --data data/tinytracing \
    --config base --limit 128 --batch-size 128 --modes static,cached --device $DEV --json | tail -1 | tee -a "$OUT/bench_eval.jsonl"
fi
for args in "--micro-batch-size 256" "--micro-batch-size 256 --compile" "--micro-batch-size 512 --compile"; do
  [ "$(left)" -gt 75 ] || { echo "skip bench $args: $(left)s left"; continue; }
  timeout 70 $PY -m tinytrace bench train --model paper --steps 20 --batch-size 512 \
    --device $DEV --json $args | tail -1 | tee -a "$OUT/bench_train.jsonl"
done

echo "== stage 4: weights of new runs ($(left)s left)"
$PY - "$CACHE" "$OUT" "$RESTORED" <<'PY' || true
import sys, glob, torch
from safetensors.torch import load_file, save
cache, out, restored = sys.argv[1], sys.argv[2], sys.argv[3].split()
for path in glob.glob(f"{cache}/run-*/model.safetensors"):
    run = path.split("/")[-2]
    if run in restored:
        continue
    blob = save({k: v.to(torch.bfloat16) for k, v in load_file(path).items()})
    for i in range(0, len(blob), 15_000_000):
        open(f"{out}/{run}.bf16.safetensors.part{i // 15_000_000}", "wb").write(blob[i:i + 15_000_000])
    print("weights", run, len(blob), "bytes")
PY
ls -la "$OUT" "$SECTIONS" 2>/dev/null
echo "slot done after $(( $(date +%s) - T0 ))s"
