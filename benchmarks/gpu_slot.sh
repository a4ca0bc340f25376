#!/usr/bin/env bash
# One GPU slot: the next units of the plan of GPU work that fit (tinytrace/experiments/slots.py,
# `tinytrace slot status` lists them), resuming where the committed done records
# (benchmarks/slots/*.json) say the last slot stopped; the records and the weights later units
# load are committed beside them (benchmarks/slots/<unit>/), so they come with the tree.
# On the GPU machine, in the repo root:
#   bash benchmarks/gpu_slot.sh     (device call: timeout_s=575, carry .whl for the section
#                                    units; DEADLINE defaults to 530; kind nvidia-h200 where
#                                    status lists it: the plan's estimates and the committed
#                                    speed results are the H200's; an H100 does too, every
#                                    record names its device)
# After it, here: `tinytrace slot import <files_at>` and `tinytrace notebooks pages`, then commit
# benchmarks/ and book/.
# What comes back in $OUT: log.txt, results.tgz (a record and the outputs of each unit) and the
# bf16 weights of the runs trained, packed (about 28 MB a paper-model run) in parts of 15 MB,
# 64 MiB in all. A unit cut short is not recorded as done.
# Tested on the CPU: OUT=/tmp/o CACHE=/tmp/c SCALE=smoke NO_WHEELS=1 PY=.venv/bin/python
#   BENCH_DEVICE=cpu bash benchmarks/gpu_slot.sh (tests/test_slots.py runs the same steps).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEADLINE=${DEADLINE:-530}  # slots.UNIT_MAX_S assumes this; a device call allows 600 s
T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if [ -z "${NO_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then  # papermill for the sections
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
exec > >(tee "$OUT/log.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
$PY -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
DEV=${BENCH_DEVICE:-cuda}
# a fresh cache each call: on a warm machine a rerun would find the last call's runs trained and
# return no weights for them
CACHE=${CACHE:-$(mktemp -d /tmp/slot-cache-XXXXXX)}
DONE=${DONE_DIR:-benchmarks/slots}  # the committed done records, records and weights
$PY -m tinytrace slot status --scale "${SCALE:-gpu}" --device "$DEV" --eval-limit "${EVAL_LIMIT:-1024}" \
  --done-dir "$DONE"
$PY -m tinytrace slot run --scale "${SCALE:-gpu}" --device "$DEV" --eval-limit "${EVAL_LIMIT:-1024}" \
  --budget "$(( $(left) - 15 ))" --out "$OUT" --cache-dir "$CACHE" \
  --done-dir "$DONE" --python "$PY"
rc=$?
ls -la "$OUT"
echo "slot done after $(( $(date +%s) - T0 ))s (exit $rc)"
exit $rc
