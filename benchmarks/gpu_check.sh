#!/usr/bin/env bash
# One prepared check for a lent GPU machine (H100 / H200; no internet; ~10 minutes of work):
#   1. the device and software;
#   2. the throughput table for NPID / CLD / CLDm at bf16 and at fp32 (ResNet-18, CIFAR stem,
#      batch 256, views made on the GPU, channels_last), with the k-means + CLD share and a check
#      that views, k-means and CLD loss never synchronise with the host;
#   3. a short CLD training run on CIFAR-10 (epoch times against the 5 s target, kNN at the end);
#   4. the bf16 table again with torch.compile;
# and prints a short table last. Every step has its own time limit and a failed step does not
# stop the later ones.
#
# Data: CIFAR-10 travels as one 53 MiB file of JPEG bytes made beforehand (on a machine that has it):
#   python benchmarks/cifar_pack.py pack ../shared/data/cifar10 .gpu-data/cifar10-jpeg.npz
# (.gpu-data/ is git-ignored; copy it along with the repository.)
#
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Results (at most 8 files) go to $OUT (default gpu-check-out/). Knobs, for a dry run on a CPU:
#   DEVICE=cpu COMPILE=0 WORKERS=1 WIDTH=8 BATCH=64 STEPS=2 WARMUP=1 TRAIN_SIZE=2000 EPOCHS=1 \
#   TRAIN_EXTRA="train_subset=2000 width=8 batch_size=64 num_groups=32 limit_train_batches=3" bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-auto}
WIDTH=${WIDTH:-64}
BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
TRAIN_SIZE=${TRAIN_SIZE:-50000}
EPOCHS=${EPOCHS:-3}
COMPILE=${COMPILE:-1}
WORKERS=${WORKERS:-8}
TRAIN_EXTRA=${TRAIN_EXTRA:-}
PACKED=${PACKED:-.gpu-data/cifar10-jpeg.npz}
DATA_DIR=${DATA_DIR:-/tmp/crosslevel-cifar10}
RUNS=${RUNS:-/tmp/crosslevel-gpu-runs}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, never abort the script
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
  local started=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  echo "=== $name: exit $status after $((SECONDS - started))s" | tee -a "$LOG"
}

THROUGHPUT=("$PYTHON" benchmarks/throughput.py --device "$DEVICE" --width "$WIDTH" --batch "$BATCH" --steps "$STEPS"
  --warmup "$WARMUP" --train-size "$TRAIN_SIZE" --workers "$WORKERS" --channels-last)

step device 60 bash -c "nvidia-smi || true; $PYTHON -c 'import torch, torchvision, lightning; print(\"torch\", torch.__version__, \"torchvision\", torchvision.__version__, \"lightning\", lightning.__version__); print(\"device:\", torch.cuda.get_device_name() if torch.cuda.is_available() else \"cpu\")'" 
step unpack 120 "$PYTHON" benchmarks/cifar_pack.py unpack "$PACKED" "$DATA_DIR"
step throughput-bf16 150 "${THROUGHPUT[@]}" --json "$OUT/throughput_bf16.json" --methods npid,cld,cldm --precision bf16-mixed --check-sync
step throughput-fp32 150 "${THROUGHPUT[@]}" --json "$OUT/throughput_fp32.json" --methods npid,cld,cldm --precision 32-true --pipeline-batches 0
rm -rf "$RUNS"
step train-cld 180 "$PYTHON" -m crosslevel train --config cifar10-cld --data "$DATA_DIR" epochs="$EPOCHS" warmup_epochs=1 \
  augment_device=device precision=bf16-mixed channels_last=true progress=false workers=0 out="$RUNS" name=cld-short $TRAIN_EXTRA
cp "$RUNS/cld-short/summary.json" "$OUT/train_summary.json" 2>/dev/null
if [ "$COMPILE" = 1 ]; then
  step throughput-bf16-compile 240 "${THROUGHPUT[@]}" --json "$OUT/throughput_bf16_compile.json" --methods npid,cld --precision bf16-mixed --compile --pipeline-batches 0
fi

"$PYTHON" - "$OUT" "$EPOCHS" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

out, epochs = Path(sys.argv[1]), sys.argv[2]
print("\n==================== GPU check: summary ====================")
machine = None
print(f"{'setting':<16} {'method':<6} {'images/s':>9} {'ms/step':>8} {'epoch s':>8} {'vs NPID':>8} {'CLD share':>9}")
for name, label in (("throughput_bf16", "bf16"), ("throughput_fp32", "fp32"), ("throughput_bf16_compile", "bf16+compile")):
    path = out / f"{name}.json"
    if not path.is_file():
        print(f"{label:<16} (no result: not run, or failed: see gpu_check.log)")
        continue
    result = json.loads(path.read_text())
    machine = machine or result["machine"]
    npid = next((r["ms_per_step"] for r in result["rows"] if r["method"] == "npid"), None)
    for r in result["rows"]:
        ratio = f"{r['ms_per_step'] / npid:.3f}" if npid else "-"
        share = f"{100 * r['cld_share']:.1f}%" if "cld_share" in r else "-"
        print(f"{label:<16} {r['method']:<6} {r['images_per_s']:>9.0f} {r['ms_per_step']:>8.1f} {r['epoch_s']:>8.2f} {ratio:>8} {share:>9}")
    for method, why in result["skipped"].items():
        print(f"{label:<16} {method:<6} skipped: {why}")
    if "sync_check" in result["pipeline"]:
        print(f"{label:<16} sync check: {result['pipeline']['sync_check']}")
    if "cpu_views_ms_per_batch" in result["pipeline"]:
        views = next((r["device_views_ms"] for r in result["rows"] if "device_views_ms" in r), None)
        print(f"{label:<16} views per batch: on device {views:.2f} ms, torchvision ({result['pipeline']['cpu_views_workers']} workers) {result['pipeline']['cpu_views_ms_per_batch']:.1f} ms")
summary = out / "train_summary.json"
if summary.is_file():
    s = json.loads(summary.read_text())
    best = min(s["epoch_seconds"]) if s["epoch_seconds"] else float("nan")
    knn = s.get("knn") or {}
    print(f"CLD training, CIFAR-10 ({s['train_images']} images), {epochs} epochs, bf16, views on device: epoch s {s['epoch_seconds']}"
          f" -> best {best:.2f} s vs target 5 s; kNN top-1 {knn.get('top1', float('nan')):.2f}%")
else:
    print("CLD training run: no result (see gpu_check.log)")
if machine:
    print(f"device: {machine['device']} | cpu: {machine['cpu']} | torch {machine['torch']} | {machine['date']}")
EOF
