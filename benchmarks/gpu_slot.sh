#!/usr/bin/env bash
# One prepared GPU slot (about 10 minutes of one H100 on a fresh machine, see issue 6):
#   1. section 02 (base model: data, training, evaluation) at `gpu` scale through papermill,
#   2. training-throughput benchmarks of the paper model (eager and compiled),
#   3. the trained weights (bf16, split) and every log, into $OUT.
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
CACHE=${CACHE:-/tmp/cache}; SCALE=${SCALE:-gpu}
SECTIONS=$OUT/sections

echo "== stage 1: section 02 at $SCALE scale ($(left)s left)"
timeout $(( $(left) - 25 )) $PY -m tinytrace notebooks run --scale "$SCALE" --only 02 \
  --out "$SECTIONS" --cache-dir "$CACHE"
echo "stage 1 exit $? after $(( $(date +%s) - T0 ))s"
for f in "$SECTIONS"/.*.log "$SECTIONS"/.*.failed.ipynb; do  # a failure's traces, visible names
  [ -e "$f" ] && cp "$f" "$SECTIONS/failed_$(basename "$f" | sed 's/^\.//')"
done
# every run log, config and evaluation record (small) in one archive
(cd "$CACHE" 2>/dev/null && tar czf "$OUT/artifacts.tgz" --exclude='state*' --exclude='*.safetensors' \
  --exclude='*.parquet' --exclude='*.bin' --exclude='*.npy' . ) || true

echo "== stage 2: training throughput ($(left)s left)"
for args in "--micro-batch-size 256" "--micro-batch-size 256 --compile" "--micro-batch-size 512 --compile"; do
  [ "$(left)" -gt 75 ] || { echo "skip bench $args: $(left)s left"; continue; }
  timeout 70 $PY -m tinytrace bench train --model paper --steps 20 --batch-size 512 \
    --device cuda --json $args | tail -1 | tee -a "$OUT/bench_train.jsonl"
done

echo "== stage 3: weights ($(left)s left)"
$PY - "$CACHE" "$OUT" <<'PY' || true
import sys, glob, io, torch
from safetensors.torch import load_file, save
cache, out = sys.argv[1:]
for path in glob.glob(f"{cache}/run-*/model.safetensors"):
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(path).items()}
    blob = save(sd)
    run = path.split("/")[-2]
    for i in range(0, len(blob), 15_000_000):
        open(f"{out}/{run}.bf16.safetensors.part{i // 15_000_000}", "wb").write(blob[i:i + 15_000_000])
    print("weights", run, len(blob), "bytes")
PY
ls -la "$OUT" "$SECTIONS" 2>/dev/null
echo "slot done after $(( $(date +%s) - T0 ))s"
