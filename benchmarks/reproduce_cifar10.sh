#!/usr/bin/env bash
# The paper's CIFAR-10 row on one GPU: kNN top-1 after 200 epochs, NPID 80.8 / MoCo 82.1 / CLD 86.7 /
# CLDm 87.5 (Table 2). One command; it prints the table "paper vs crosslevel" last:
#   bash benchmarks/reproduce_cifar10.sh                      # METHODS="cld npid-1view cldm moco"
#   METHODS="cld npid-1view" TOTAL_S=540 bash benchmarks/reproduce_cifar10.sh
# Each preset cifar10-<method> trains as shipped (ResNet-18, the reference's recipe: batch 256; NPID's own
# recipe for npid-1view: batch 128; 200 epochs, kNN every EVAL_EVERY epochs), with the speed path that
# leaves the recipe alone: views made on the GPU, bf16-mixed autocast (losses in fp32), channels_last,
# fused_views=true (one pass over the stacked views, BatchNorm per view) and cuda_graphs=true (SPEED to
# change it). All runs train at once on the one card, one process each.
# Time: the script ends within TOTAL_S seconds (default: none). METHODS is also the order of priority:
# every POLL_S seconds benchmarks/pace.py measures each run's pace on the shared card and projects its
# end; when one would miss the deadline the last run still training in METHODS' order is stopped
# (SIGTERM: a resumable checkpoint), which gives the others its share of the card, until the rest fit
# (never the last one). A run still going at TOTAL_S gets SIGTERM too. A run that fails is tried once
# more with FALLBACK on top of SPEED (default, with cuda_graphs=true in SPEED: cuda_graphs=false
# compile=true), from its checkpoint or afresh, so that CUDA graphs failing on a card cost the call
# minutes, not the whole call. Running the script again with the same RUNS resumes every unfinished
# run where it stopped (resume=RUNS/<method>) and leaves finished ones alone. A checkpoint of one run is ~115 MB (weights, SGD momentum, the 50,000 x 128
# bank), written every CHECKPOINT_EVERY epochs and at every stop: RUNS must persist between the calls
# (a machine that is handed back loses it).
# Data: DATA_DIR with cifar-10-batches-py/, else unpacked from PACKED (made beforehand with
#   python benchmarks/cifar_pack.py pack ../shared/data/cifar10 .gpu-data/cifar10-jpeg.npz).
# Results in $OUT (default reproduce-out/): table.md, reproduce.log and runs.tar.gz: each run's folder
# (train.log, summary.json, metrics.csv, curves.png from `crosslevel plot --curves-only`: no model, no data) and pace.json, in one archive
# because a lent GPU machine returns at most 8 files (BUNDLE=0 leaves the folders as they are).
# Dry run on a CPU (about 2 minutes), from the repository root:
#   DEVICE=cpu PYTHON=.venv/bin/python METHODS="cld npid-1view" EPOCHS=2 EVAL_EVERY=1 DATA_DIR=/tmp/tiny-cifar \
#   EXTRA="backbone=smallcnn width=8 batch_size=64 num_groups=32 train_subset=512 test_subset=256" \
#   SPEED="augment_device=device" bash benchmarks/reproduce_cifar10.sh
set -uo pipefail
OUT=${OUT:-reproduce-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-gpu}  # gpu (CUDA checked first) | cpu (dry run)
METHODS=${METHODS:-cld npid-1view cldm moco}
EPOCHS=${EPOCHS:-200}
EVAL_EVERY=${EVAL_EVERY:-10}
TOTAL_S=${TOTAL_S:-0}  # 0: no limit
RESERVE_S=${RESERVE_S:-90}  # after the runs' deadline: their 60 s of grace after SIGTERM (a first kNN compile), then plots and the table
POLL_S=${POLL_S:-15}
BUNDLE=${BUNDLE:-1}  # 1: each run's files in $OUT/runs.tar.gz (a lent GPU machine returns at most 8 files); 0: as folders
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-20}  # epochs between periodic checkpoints (~115 MB, ~0.3 s each)
SPEED=${SPEED-augment_device=device precision=bf16-mixed channels_last=true fused_views=true cuda_graphs=true}
# keys for one more try of a run that fails under SPEED (from its checkpoint, or afresh); empty: no retry
FALLBACK=${FALLBACK-$([[ " $SPEED " == *" cuda_graphs=true "* ]] && echo "cuda_graphs=false compile=true")}
EXTRA=${EXTRA:-}
PACKED=${PACKED:-.gpu-data/cifar10-jpeg.npz}
DATA_DIR=${DATA_DIR:-/tmp/crosslevel-cifar10}
RUNS=${RUNS:-runs/reproduce-cifar10}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
LOG="$OUT/reproduce.log"
START=$SECONDS

pids=() launched=() status=() stopped=() retried=()  # per run; stopped: 1 where pace.py stopped it

report() {  # plots, copies and the table, from whatever the runs hold
  local runs=() kept=()
  for method in $METHODS; do
    [ -f "$RUNS/$method/config.json" ] || continue
    runs+=("$RUNS/$method")
    mkdir -p "$OUT/$method"
    kept+=("$method")
    if compgen -G "$RUNS/$method/logs/version_*/metrics.csv" >/dev/null; then  # finished or not: its logs so far
      timeout -k 10 60 "$PYTHON" -m crosslevel plot "$RUNS/$method" --curves-only >>"$LOG" 2>&1 &&
        cp "$RUNS/$method/plots/training_curves.png" "$OUT/$method/curves.png"
      cp "$RUNS/$method/metrics.csv" "$OUT/$method/metrics.csv" 2>/dev/null
    fi
    cp "$RUNS/$method/summary.json" "$OUT/$method/summary.json" 2>/dev/null
  done
  echo
  echo "==================== paper vs crosslevel: CIFAR-10, kNN top-1 (k = 200, f_I) ===================="
  [ ${#runs[@]} -gt 0 ] && "$PYTHON" benchmarks/paper_table.py "${runs[@]}" --out "$OUT/table.md"
  "$PYTHON" -c 'import datetime, torch; print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
"| torch", torch.__version__, "|", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))' | tee -a "$OUT/table.md"
  echo "settings: presets as shipped, epochs=$EPOCHS eval_every=$EVAL_EVERY $SPEED $EXTRA" | tee -a "$OUT/table.md"
  local i again=()
  for i in "${!retried[@]}"; do again+=("${launched[$i]}"); done
  [ ${#again[@]} -gt 0 ] && echo "tried again with $FALLBACK after failing under these settings: ${again[*]}" | tee -a "$OUT/table.md"
  if [ "$BUNDLE" = 1 ] && [ ${#kept[@]} -gt 0 ]; then  # one archive: a lent machine returns at most 8 files
    tar -czf "$OUT/runs.tar.gz" -C "$OUT" "${kept[@]}" $([ -f "$OUT/pace.json" ] && echo pace.json) &&
      (cd "$OUT" && rm -rf "${kept[@]}" pace.json)
  fi
}
trap report EXIT
trap 'exit 143' TERM INT

if [ "$DEVICE" = cpu ]; then
  ACCELERATOR=cpu
else
  ACCELERATOR=gpu
  if ! timeout -k 10 60 "$PYTHON" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1; then
    echo "reproduce_cifar10: stopping: no usable CUDA GPU (see $LOG); DEVICE=cpu for a dry run" >&2
    trap - EXIT
    exit 1
  fi
fi
if [ ! -f "$DATA_DIR/cifar-10-batches-py/test_batch" ]; then
  "$PYTHON" benchmarks/cifar_pack.py unpack "$PACKED" "$DATA_DIR" 2>&1 | tee -a "$LOG" || exit 1
fi

DEADLINE=$(($(date +%s) + TOTAL_S - (SECONDS - START) - RESERVE_S))  # unix time the runs must end by (TOTAL_S > 0)

time_left() {  # more than 10 s before the deadline (always, without TOTAL_S)
  [ "$TOTAL_S" -le 0 ] || [ $((DEADLINE - $(date +%s))) -gt 10 ]
}

launch() {  # launch I METHOD [KEY=VALUE ...]: start run I of METHOD in the background, from its checkpoint if it has one
  local i=$1 method=$2 what limit
  shift 2
  if [ -f "$RUNS/$method/checkpoints/last.ckpt" ]; then
    what=(resume="$RUNS/$method" --data "$DATA_DIR" "$@")
  else
    what=(--config "cifar10-$method" --data "$DATA_DIR" epochs="$EPOCHS" eval_every="$EVAL_EVERY" $SPEED
          checkpoint_every="$CHECKPOINT_EVERY" accelerator="$ACCELERATOR" workers=0 progress=false out="$RUNS"
          name="$method" $EXTRA "$@")
  fi
  time_left || { echo "$method: no time left" | tee -a "$LOG"; return 1; }
  echo "$method: crosslevel train ${what[*]}" | tee -a "$LOG"
  mkdir -p "$OUT/$method"
  if [ "$TOTAL_S" -gt 0 ]; then
    limit=$((DEADLINE - $(date +%s)))
    timeout -k 60 "$limit" "$PYTHON" -m crosslevel train "${what[@]}" >>"$OUT/$method/train.log" 2>&1 &
  else
    "$PYTHON" -m crosslevel train "${what[@]}" >>"$OUT/$method/train.log" 2>&1 &
  fi
  pids[$i]=$!
}

set_aside() {  # set_aside METHOD: a run folder with nothing to resume (no checkpoint) moves to METHOD.failed
  if [ -d "$RUNS/$1" ] && [ ! -f "$RUNS/$1/checkpoints/last.ckpt" ]; then
    rm -rf "$RUNS/$1.failed" && mv "$RUNS/$1" "$RUNS/$1.failed"
  fi
}

retry() {  # retry I: run I failed under SPEED; once, with FALLBACK on top (from its checkpoint, else afresh)
  local i=$1 method=${launched[$1]}
  [ -n "$FALLBACK" ] && [ -z "${retried[$i]:-}" ] && [ -z "${stopped[$i]:-}" ] || return 1
  time_left || { echo "$method: failed (exit ${status[$i]}), no time left to try again" | tee -a "$LOG"; return 1; }
  retried[$i]=1
  echo "$method: failed (exit ${status[$i]}; last line of its log: $(tail -n 1 "$OUT/$method/train.log"))," \
    "trying again with $FALLBACK" | tee -a "$LOG"
  set_aside "$method"  # pace.py measures the new attempt afresh
  echo "==== tried again with $FALLBACK ====" >>"$OUT/$method/train.log"
  launch "$i" "$method" $FALLBACK && unset "status[$i]"
}

for method in $METHODS; do
  if [ -f "$RUNS/$method/summary.json" ]; then
    echo "$method: finished earlier ($RUNS/$method)" | tee -a "$LOG"
    continue
  fi
  set_aside "$method"  # an earlier call's run that failed before its first checkpoint: started afresh
  i=${#launched[@]}
  launched[$i]=$method
  launch "$i" "$method" || unset "launched[$i]"
done

[ "$TOTAL_S" -gt 0 ] && [ ${#launched[@]} -gt 1 ] && rm -f "$OUT/pace.json" && triaging=1 || triaging=
while :; do  # until every run has ended: retries of failed runs and (TOTAL_S, several runs) the pace triage
  alive=() alive_runs=() running=0
  for i in "${!launched[@]}"; do
    [ -n "${status[$i]:-}" ] && continue
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      running=1
      [ -z "${stopped[$i]:-}" ] && alive+=("$i") && alive_runs+=("$RUNS/${launched[$i]}")
      continue
    fi
    wait "${pids[$i]}"
    status[$i]=$?
    case ${status[$i]} in 0 | 124 | 137) ;; *) retry "$i" && running=1 ;; esac  # 124, 137: TOTAL_S (TERM, then KILL)
  done
  [ "$running" = 1 ] || break
  if [ -n "$triaging" ] && [ ${#alive[@]} -gt 0 ]; then
    paces=$("$PYTHON" benchmarks/pace.py "$OUT/pace.json" "$DEADLINE" "$EPOCHS" "${alive_runs[@]}" 2>&1)
    sed "s/^/[$((SECONDS - START)) s] /" <<<"$paces" >>"$LOG"
    stop=$(sed -n "s/^stop: //p" <<<"$paces")
    for i in "${alive[@]}"; do
      if [ "$RUNS/${launched[$i]}" = "$stop" ]; then
        grep -v "^stop:" <<<"$paces" | tee -a "$LOG"
        echo "${launched[$i]}: stopped (SIGTERM) to give the card to the runs before it in METHODS" | tee -a "$LOG"
        kill -TERM "${pids[$i]}"
        stopped[$i]=1
      fi
    done
  fi
  for ((waited = 0; waited < POLL_S; waited++)); do  # back at once when a run ends
    sleep 1
    for i in "${!launched[@]}"; do
      [ -z "${status[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null && break 2
    done
  done
done
for i in "${!launched[@]}"; do
  case ${status[$i]} in
    0) note="done" ;;
    124) note="stopped at TOTAL_S: resumable checkpoint in $RUNS/${launched[$i]} (run the script again)" ;;
    137) note="killed at TOTAL_S (no exit within 60 s of SIGTERM): the last checkpoint in $RUNS/${launched[$i]} resumes" ;;
    *) note="failed: see ${launched[$i]}/train.log (in $OUT, or in $OUT/runs.tar.gz)" ;;
  esac
  [ -n "${stopped[$i]:-}" ] && note="stopped to let the runs before it finish: resumable checkpoint in $RUNS/${launched[$i]}"
  [ -n "${retried[$i]:-}" ] && note="$note (with $FALLBACK after a failure under SPEED)"
  echo "train ${launched[$i]}: exit ${status[$i]}, $note" | tee -a "$LOG"
done
