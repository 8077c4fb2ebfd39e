#!/usr/bin/env bash
# One prepared check for a lent GPU machine (H100 / H200; no internet), made to fit one 600 s call:
#   1. CUDA must be usable, else the script stops at once (DEVICE=cpu skips this check: a dry run);
#      then the device and software;
#   2. CIFAR-10 unpacked from the packed file (below);
#   3. throughput of NPID, CLD, MoCo and CLDm (ResNet-18, CIFAR stem, batch 256, bf16, channels_last,
#      views made on the GPU, the MoCo presets' random erasing included; SPEED_FLAGS, default
#      "--cuda-graphs --set fused_views=true": compiled and replayed as CUDA graphs, one pass over
#      the stacked query views; "" for eager, --compile without graphs)
#      over REPEATS interleaved rounds: epoch seconds per method (target: CLD <= 1.5 s on an
#      H100/H200 with CUDA graphs), the CLD/NPID (target <= 1.05) and CLDm/MoCo (target <= 1.6)
#      step-time ratios with their spread, the k-means + CLD share, a check that views, k-means and
#      CLD loss never synchronise with the host and (--cuda-graphs) a count of the synchronisations
#      in each method's whole training step;
#   4. the presets cifar10-<name> for each name of TRAIN (default "npid cld") trained at once on the
#      one card (one process each) on full CIFAR-10 for EPOCHS epochs, kNN every EVAL_EVERY, with
#      TRAIN_SPEED (default fused_views=true cuda_graphs=true); the paper's 200-epoch row:
#      reproduce_cifar10.sh;
#      e.g. TRAIN="simclr simclr-cld byol byol-cld" THROUGHPUT_METHODS=npid,cld,simclr,simclr+cld,byol,byol+cld
#      measures CLD on SimCLR and BYOL; TRAIN="" measures the throughput only (step 3 then gets the
#      whole TOTAL_S, else THROUGHPUT_S=300: compiling four methods cold takes minutes);
# and, whatever happened before, a short table last (also in $OUT/summary.txt).
# Time: the whole script ends within TOTAL_S seconds (default 540): every step's limit is capped
# by the time left (less RESERVE_S for the kill grace and the table), a step that overruns gets
# SIGTERM then SIGKILL 10 s later (timeout -k 10), and a failed step does not stop the later ones.
# EPOCHS=30 is sized for ~6-8 s per epoch of each run while both share one H100.
#
# Data: CIFAR-10 travels as one 53 MiB file of JPEG bytes made beforehand (on a machine that has it):
#   python benchmarks/cifar_pack.py pack ../shared/data/cifar10 .gpu-data/cifar10-jpeg.npz
# (.gpu-data/ is git-ignored; carry it along with the repository.)
#
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Results (3 files and 2 a trained preset: 7 with the default TRAIN; past 8, what a lent machine returns, the
# runs' files go into one runs.tar.gz; summary.txt has the figures of all of them; JSON written as each
# measurement ends) go to $OUT (default gpu-check-out/).
# Dry run on a CPU (a few minutes on 2 cores), from the repository root:
#   DEVICE=cpu PYTHON=.venv/bin/python SPEED_FLAGS= TRAIN_SPEED= BACKBONE=smallcnn WIDTH=8 BATCH=64 STEPS=2 WARMUP=1 \
#   REPEATS=2 TRAIN_SIZE=2000 \
#   WORKERS=1 EPOCHS=2 EVAL_EVERY=1 TRAIN_EXTRA="backbone=smallcnn width=8 batch_size=64 num_groups=32 train_subset=2000 \
#   test_subset=500 limit_train_batches=3" bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-check-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-gpu}  # gpu (CUDA checked first) | cpu (dry run)
TOTAL_S=${TOTAL_S:-540}
RESERVE_S=${RESERVE_S:-20}
BACKBONE=${BACKBONE:-resnet18_cifar}
WIDTH=${WIDTH:-64}
BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
REPEATS=${REPEATS:-3}
SPEED_FLAGS=${SPEED_FLAGS---cuda-graphs --set fused_views=true}
TRAIN_SPEED=${TRAIN_SPEED-fused_views=true cuda_graphs=true}
TRAIN_SIZE=${TRAIN_SIZE:-50000}
WORKERS=${WORKERS:-8}
EPOCHS=${EPOCHS:-30}
WARMUP_EPOCHS=${WARMUP_EPOCHS:-$(((EPOCHS + 39) / 40))}  # the paper's 5 of 200, at least 1
EVAL_EVERY=${EVAL_EVERY:-5}
THROUGHPUT_METHODS=${THROUGHPUT_METHODS:-npid,cld,moco,cldm}
TRAIN=${TRAIN-npid cld}  # "": throughput only
THROUGHPUT_S=${THROUGHPUT_S:-$([ -n "$TRAIN" ] && echo 300 || echo "$TOTAL_S")}  # capped by the time left
TRAIN_EXTRA=${TRAIN_EXTRA:-}
PACKED=${PACKED:-.gpu-data/cifar10-jpeg.npz}
DATA_DIR=${DATA_DIR:-/tmp/crosslevel-cifar10}
RUNS=${RUNS:-/tmp/crosslevel-gpu-runs}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
START=$SECONDS
LIMIT=0

summary() {  # the table, from whatever results exist
  "$PYTHON" - "$OUT" "$EPOCHS" "$TRAIN" <<'EOF' | tee "$OUT/summary.txt"
import csv, json, statistics, sys
from pathlib import Path

out, epochs, trained = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
print("\n==================== GPU check: summary ====================")
path = out / "throughput.json"
machine = None
if path.is_file():
    result = json.loads(path.read_text())
    machine, s = result["machine"], result["settings"]
    print(f"throughput: {s['backbone']} width {s['width']}, batch {s['batch']}, {s['precision']}, views on {s['augment']}, "
          f"channels_last={s['channels_last']}, {s['steps']} timed steps x {s['repeats']} interleaved rounds (median round)")
    print(f"{'method':<10} {'images/s':>9} {'ms/step':>8} {'epoch s':>8} {'rounds ms/step':>28} {'CLD share':>9}")
    for r in result["rows"]:
        rounds = " ".join(f"{ms:.1f}" for ms in r["rounds_ms_per_step"])
        share = f"{100 * r['cld_share']:.1f}%" if "cld_share" in r else "-"
        print(f"{r['method']:<10} {r['images_per_s']:>9.0f} {r['ms_per_step']:>8.1f} {r['epoch_s']:>8.2f} {rounds:>28} {share:>9}")
    print(f"compile={s['compile']}, cuda_graphs={s.get('cuda_graphs', False)}")
    for r in result["rows"]:
        if "probe_error" in r:
            print(f"{r['method']}: k-means + CLD / views timing failed: {r['probe_error']}")
        if "cudagraph_skips" in r:
            skips = r["cudagraph_skips"]
            print(f"CUDA graphs, {r['method']}: " + (f"{len(skips)} part(s) run WITHOUT graphs, first: {skips[0]}" if skips else "every compiled part replayed"))
    cld = next((r for r in result["rows"] if r["method"] == "cld"), None)
    if cld:
        print(f"CLD epoch {cld['epoch_s']:.2f} s ({s['train_size']} images) vs target 1.5 s: {'met' if cld['epoch_s'] <= 1.5 else 'MISSED'}")
    targets = {"CLD/NPID": 1.05, "CLDm/MoCo": 1.6}
    for name, q in result["ratios"].items():
        target = targets.get(name)
        verdict = f" vs target {target}: {'met' if q['median'] <= target else 'MISSED'}" if target else ""
        print(f"{name} step time: median {q['median']:.3f}, range {q['min']:.3f}-{q['max']:.3f} over {len(q['rounds'])} rounds{verdict}")
    for method, why in {**result["skipped"], **result["failed"]}.items():
        print(f"{method}: not measured: {why}")
    pipeline = result["pipeline"]
    if "sync_check" in pipeline:
        print(f"sync check: {pipeline['sync_check']}")
    for method, verdict in pipeline.get("step_sync_check", {}).items():
        print(f"whole-step sync check, {method}: {verdict}")
    if "cpu_views_ms_per_batch" in pipeline:
        views = next((r["device_views_ms"] for r in result["rows"] if r["method"] == "cld" and "device_views_ms" in r), None)
        print(f"CLD views per batch: on the device {views or float('nan'):.2f} ms, "
              f"torchvision ({pipeline['cpu_views_workers']} workers) {pipeline['cpu_views_ms_per_batch']:.1f} ms")
else:
    print("throughput: no result (see gpu_check.log)")

def knn_curve(method):
    path = out / f"{method}_metrics.csv"
    if not path.is_file():
        return {}
    rows = [r for r in csv.DictReader(open(path, newline="")) if r.get("knn_top1")]
    return {int(float(r["epoch"])): float(r["knn_top1"]) for r in rows}  # metrics.csv counts epochs from 1

runs = {m: json.loads((out / f"{m}_summary.json").read_text()) for m in trained if (out / f"{m}_summary.json").is_file()}
curves = {m: knn_curve(m) for m in trained}
if trained:  # TRAIN="": throughput only
    print(f"\n{' vs '.join(trained)}: presets cifar10-<name>, CIFAR-10, {epochs} epochs, all at once on one device; kNN top-1 (%):")
    print(f"{'epoch':>5} " + " ".join(f"{m:>10}" for m in trained))
    for epoch in sorted(set().union(*curves.values())):
        cells = [f"{curves[m][epoch]:>10.2f}" if epoch in curves[m] else f"{'-':>10}" for m in trained]
        print(f"{epoch:>5} {' '.join(cells)}")
    for method in trained:
        run = runs.get(method)
        if run is None:
            print(f"{method.upper()}: no result (not run, or failed: see gpu_check.log)")
            continue
        knn = run.get("knn") or {}
        seconds = run["epoch_seconds"]
        median = f"{statistics.median(seconds):.2f}" if seconds else "-"
        print(f"{method.upper()}: {run['epochs']} epochs of {run['train_images']} images, median epoch {median} s (sharing the device), "
              f"final kNN top-1 {knn.get('top1', float('nan')):.2f}%")
if machine:
    print(f"device: {machine['device']} | cpu: {machine['cpu']} | torch {machine['torch']} | {machine['date']}")
EOF
  local runs
  runs=$(cd "$OUT" && ls | grep -E '_(summary\.json|metrics\.csv)$')
  if [ "$(ls "$OUT" | wc -l)" -gt 8 ] && [ -n "$runs" ]; then  # a lent machine returns at most 8 files
    tar -czf "$OUT/runs.tar.gz" -C "$OUT" $runs && (cd "$OUT" && rm -f $runs) &&
      echo "(the runs' summaries and metrics: $OUT/runs.tar.gz)"
  fi
}
trap summary EXIT
trap 'exit 143' TERM INT

begin() {  # begin NAME SECONDS: LIMIT = SECONDS capped by the time left; false if too little is left
  local name=$1 left=$((TOTAL_S - (SECONDS - START) - RESERVE_S))
  LIMIT=$(($2 < left ? $2 : left))
  if [ "$LIMIT" -lt 5 ]; then
    echo "=== $name: skipped, ${left}s left of TOTAL_S=$TOTAL_S" | tee -a "$LOG"
    return 1
  fi
  echo "=== $name ($(date -u +%H:%M:%S), limit ${LIMIT}s)" | tee -a "$LOG"
}

step() {  # step NAME SECONDS COMMAND...: run with a capped time limit, log, never abort the script
  local name=$1 started=$SECONDS
  begin "$1" "$2" || return 1
  shift 2
  timeout -k 10 "$LIMIT" "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  echo "=== $name: exit $status after $((SECONDS - started))s" | tee -a "$LOG"
  return "$status"
}

if [ "$DEVICE" = cpu ]; then
  ACCELERATOR=cpu
  echo "DEVICE=cpu: dry run on the CPU, CUDA not checked" | tee -a "$LOG"
else
  ACCELERATOR=gpu
  if ! timeout -k 10 60 "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1; then
    echo "gpu_check: stopping: no usable CUDA GPU (torch.cuda.is_available() is false; see $LOG)." \
      "Every step would run on the host. For a dry run on a CPU set DEVICE=cpu." | tee -a "$LOG" >&2
    exit 1
  fi
fi

step device 60 bash -c "nvidia-smi || true; df -h /dev/shm || true; $PYTHON -c 'import torch, torchvision, lightning; print(\"torch\", torch.__version__, \"torchvision\", torchvision.__version__, \"lightning\", lightning.__version__); print(\"device:\", torch.cuda.get_device_name() if torch.cuda.is_available() else \"cpu\")'"
if [ -f "$DATA_DIR/cifar-10-batches-py/test_batch" ]; then
  echo "=== unpack: $DATA_DIR already holds CIFAR-10" | tee -a "$LOG"
elif [ -f "$PACKED" ]; then
  step unpack 120 "$PYTHON" benchmarks/cifar_pack.py unpack "$PACKED" "$DATA_DIR"
elif [ -n "$TRAIN" ]; then
  echo "=== no CIFAR-10: neither $DATA_DIR nor $PACKED (carry .gpu-data/); training skipped, throughput only" | tee -a "$LOG"
  TRAIN=""
fi
step throughput "$THROUGHPUT_S" "$PYTHON" benchmarks/throughput.py --device "$ACCELERATOR" --backbone "$BACKBONE" --width "$WIDTH" --batch "$BATCH" \
  --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS" --train-size "$TRAIN_SIZE" --workers "$WORKERS" \
  --methods "$THROUGHPUT_METHODS" --precision bf16-mixed --channels-last --check-sync $SPEED_FLAGS --json "$OUT/throughput.json"

rm -rf "$RUNS"
mkdir -p "$RUNS"
if [ -n "$TRAIN" ] && begin train 480; then  # all runs at once, each under the same capped limit
  started=$SECONDS
  pids=()
  for method in $TRAIN; do
    timeout -k 10 "$LIMIT" "$PYTHON" -m crosslevel train --config "cifar10-$method" --data "$DATA_DIR" \
      epochs="$EPOCHS" warmup_epochs="$WARMUP_EPOCHS" eval_every="$EVAL_EVERY" augment_device=device \
      precision=bf16-mixed channels_last=true workers=0 accelerator="$ACCELERATOR" progress=false checkpoint_every="$EPOCHS" \
      out="$RUNS" name="$method" $TRAIN_SPEED $TRAIN_EXTRA >"$RUNS/$method.log" 2>&1 &
    pids+=($!)
  done
  for method in $TRAIN; do
    wait "${pids[0]}"
    status=$?
    pids=("${pids[@]:1}")
    echo "--- $method (last lines of its log)" >>"$LOG"
    tail -n 30 "$RUNS/$method.log" >>"$LOG"
    echo "=== train $method: exit $status" | tee -a "$LOG"
    cp "$RUNS/$method/summary.json" "$OUT/${method}_summary.json" 2>/dev/null
    # the metrics, joined from the live log when the run was stopped before it joined them (a partial curve)
    "$PYTHON" -c 'import sys; from pathlib import Path; from crosslevel.run_dir import current_metrics; print(current_metrics(Path(sys.argv[1])) or "")' \
      "$RUNS/$method" 2>>"$LOG" | xargs -r -I{} cp {} "$OUT/${method}_metrics.csv"
  done
  echo "=== train: done after $((SECONDS - started))s" | tee -a "$LOG"
fi
