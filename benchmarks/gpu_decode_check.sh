#!/usr/bin/env bash
# decode=gpu on a lent GPU machine (H100 / H200; no internet), made to fit one 600 s call:
#   1. CUDA must be usable, else the script stops at once (DEVICE=cpu skips this check: a dry run);
#   2. an ImageNet-100-sized folder of JPEGs made from packed CIFAR-10, or from synthetic sources when PACKED
#      is not there (benchmarks/decode_speed.py make: 100 classes named as the CMC list x PER_CLASS (1,300)
#      images, 400x350, quality 90), unless FOLDER has one;
#   3. benchmarks/decode_speed.py measure, side by side with WORKERS (8) loader processes: images/s of the data
#      path alone for PIL workers (decode=cpu) and GPU decode (decode=gpu; and gpu_decoder=nvimgcodec, the
#      hardware JPEG decoder, when nvImageCodec is there), and of the imagenet100-cldm training step
#      (ResNet-50, batch 64, bf16, channels_last) fed by each and from images in GPU memory;
#      target: the GPU-decode data path >= 1.5 x the step's rate; first, that the GPU decode gives the CPU
#      decode's pixels behind queued work on its stream and decoded ahead as in training (agreement);
# and, whatever happened before, the table last (also in $OUT/decode_summary.txt).
# Time: the whole script ends within TOTAL_S seconds (default 540); the folder gets at most MAKE_S (200).
#
# Data: CIFAR-10 travels as one 53 MiB file of JPEG bytes made beforehand (on a machine that has it):
#   python benchmarks/cifar_pack.py pack ../shared/data/cifar10 .gpu-data/cifar10-jpeg.npz
# nvImageCodec (not on the GPU machine) travels as wheels in .whl/ (git-ignored; carry .whl, not .gpu-data:
# 32 + 4 MiB of wheels and 53 MiB of CIFAR are more than a call carries), fetched beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl nvidia-nvimgcodec-cu13 nvidia-nvjpeg
# and installed here into /tmp/site first.
# Run from the repository root:  bash benchmarks/gpu_decode_check.sh   (results: $OUT, default gpu-check-out/)
# Dry run on a CPU (about a minute on 2 cores):
#   DEVICE=cpu PYTHON=.venv/bin/python PER_CLASS=1 SIZE="--width 64 --height 56" WORKERS=1 \
#   MEASURE_EXTRA="--seconds 3 --warmup 1 --steps 2 --precision 32-true --set backbone=smallcnn width=4 image_size=32 batch_size=8" \
#   FOLDER=/tmp/crosslevel-in100-dry bash benchmarks/gpu_decode_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-gpu}
TOTAL_S=${TOTAL_S:-540}
MAKE_S=${MAKE_S:-200}
PACKED=${PACKED:-.gpu-data/cifar10-jpeg.npz}
FOLDER=${FOLDER:-/tmp/crosslevel-in100-jpeg}
PER_CLASS=${PER_CLASS:-1300}
SIZE=${SIZE:-}
WORKERS=${WORKERS:-8}
MEASURE_EXTRA=${MEASURE_EXTRA:-}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_decode_check.log"
: >"$LOG"
START=$SECONDS
left() { echo $((TOTAL_S - (SECONDS - START) - 15)); }
summary() {
  if [ -f "$OUT/decode_speed.json" ]; then
    "$PYTHON" benchmarks/decode_speed.py table "$OUT/decode_speed.json" | tee "$OUT/decode_summary.txt"
  else
    echo "decode speed: no result (see $LOG)" | tee "$OUT/decode_summary.txt"
  fi
}
trap summary EXIT
trap 'exit 143' TERM INT

if [ "$DEVICE" != cpu ] && ! timeout -k 10 60 "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1; then
  echo "gpu_decode_check: stopping: no usable CUDA GPU (see $LOG); DEVICE=cpu for a dry run" | tee -a "$LOG" >&2
  exit 1
fi
df -h /dev/shm >>"$LOG" 2>&1  # where the loader workers' batches pass: a small one fails them with a bus error
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "=== wheels: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 &&
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ ! -d "$FOLDER/train" ]; then
  limit=$(($(left) < MAKE_S ? $(left) : MAKE_S))
  sources=$([ -f "$PACKED" ] && echo "$PACKED" || echo synthetic)
  echo "=== make $FOLDER from $sources ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
  timeout -k 10 "$limit" "$PYTHON" benchmarks/decode_speed.py make "$sources" "$FOLDER" --per-class "$PER_CLASS" $SIZE 2>&1 | tee -a "$LOG"
fi
limit=$(left)
echo "=== measure ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
timeout -k 10 "$limit" "$PYTHON" benchmarks/decode_speed.py measure "$FOLDER" --workers "$WORKERS" --time-limit $((limit - 30)) \
  --json "$OUT/decode_speed.json" $MEASURE_EXTRA >>"$LOG" 2>&1
echo "=== measure: exit $? after $((SECONDS - START))s" | tee -a "$LOG"
