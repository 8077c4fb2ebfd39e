"""Which of several runs training side by side on one card will end before a deadline, and which to
stop so that the ones that matter more do: the triage of ``reproduce_cifar10.sh`` under ``TOTAL_S``.

Called every few seconds with the runs still training, most important first; each call records how
many epochs each run has logged (the end-of-epoch rows of its CSV logs) in a JSON state file, measures
each run's pace from those records (seconds per epoch *while sharing the card*, the compiling first
epoch left out, and the slowest interval between records too, so that one stall -- the first kNN
evaluation compiling the eval-mode model -- does not count as the pace) and projects its end. When a run would miss the deadline it names the least important
run to stop (SIGTERM: a resumable checkpoint), which gives the others its share of the card; after a
stop it measures the paces anew and waits ``--settle-s`` before judging again, and it never stops the
last run. A run started again (a new attempt's log folder, or a fresh folder) is measured afresh.
Prints one line per run, then ``stop: RUN`` when one should stop.

    python benchmarks/pace.py STATE.json DEADLINE_UNIX_S EPOCHS runs/cld runs/npid-1view runs/cldm
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

MIN_EPOCHS = 3  # epochs between the first and the last record before a pace is trusted
MIN_INTERVALS = 3  # intervals between records before a pace is trusted: the slowest is left out (a stall)


def epochs_logged(run: Path) -> int:
    """Epochs a run has finished by its CSV logs (the epochs of rows with ``images_per_s``, one per epoch
    end, over every attempt, an epoch trained again after a resume counted once; the logger flushes every
    100 steps, so this lags by at most that)."""
    epochs: set[str] = set()
    for part in (run / "logs").glob("version_*/metrics.csv"):
        with open(part, newline="") as handle:
            epochs.update(row["epoch"] for row in csv.DictReader(handle) if row.get("images_per_s"))
    return len(epochs)


@dataclass(frozen=True)
class Projection:
    """One run: epochs done, seconds per epoch (None until measured over ``MIN_EPOCHS``), projected end (unix s)."""

    run: str
    done: int
    seconds_per_epoch: float | None
    ends_at: float | None


def project(records: list[tuple[float, int]], epochs: int, final_s: float) -> tuple[float | None, float | None]:
    """(seconds per epoch, projected end) from one run's ``(time, epochs done)`` records, one per change:
    seconds over epochs of the intervals between records from the first change on (the epoch before it
    compiles, or was partly seen), less the slowest interval (one a stall stretched: the first kNN
    compiling), once ``MIN_INTERVALS`` intervals and ``MIN_EPOCHS`` epochs lie between the records; a
    sum, not a median, as polls every few seconds cut epochs of about that length into uneven
    intervals. The end is the last record's time plus the epochs left at that pace plus ``final_s``
    (the last kNN, checkpoint and summary). (None, None) until then."""
    started = [(when, done) for when, done in records if done > records[0][1]] if records else []
    if len(started) <= MIN_INTERVALS or started[-1][1] - started[0][1] < MIN_EPOCHS:
        return None, None
    intervals = sorted(((t1 - t0, d1 - d0) for (t0, d0), (t1, d1) in zip(started, started[1:])), key=lambda i: i[0] / i[1])
    pace = sum(seconds for seconds, _ in intervals[:-1]) / sum(epochs for _, epochs in intervals[:-1])
    last_t, last_done = started[-1]
    return pace, last_t + max(epochs - last_done, 0) * pace + final_s


def triage(state: dict, runs: list[str], epochs: int, deadline: float, now: float, final_s: float, settle_s: float) -> tuple[list[Projection], str | None]:
    """The projections of ``runs`` (most important first) from ``state["records"]`` and the run to stop:
    the last of ``runs`` when any of them is projected past ``deadline``, at most one per ``settle_s``
    (``state["stopped_at"]``), never the only one left."""
    projections = []
    for run in runs:
        pace, ends_at = project([tuple(record) for record in state["records"].get(run, [])], epochs, final_s)
        done = state["records"][run][-1][1] if state["records"].get(run) else 0
        projections.append(Projection(run, done, pace, ends_at))
    late = any(p.ends_at is not None and p.ends_at > deadline for p in projections)
    settled = now - state.get("stopped_at", float("-inf")) >= settle_s
    return projections, runs[-1] if late and settled and len(runs) > 1 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path, help="JSON file of the records (created on the first call)")
    parser.add_argument("deadline", type=float, help="unix time by which the runs must have ended")
    parser.add_argument("epochs", type=int, help="epochs each run trains")
    parser.add_argument("runs", nargs="+", help="run directories still training, most important first")
    parser.add_argument("--final-s", type=float, default=30.0, help="seconds after the last epoch (kNN, checkpoint, summary)")
    parser.add_argument("--settle-s", type=float, default=60.0, help="seconds after a stop before judging again")
    args = parser.parse_args(argv)
    state = json.loads(args.state.read_text()) if args.state.is_file() else {"records": {}}
    now = time.time()
    attempts = state.setdefault("attempts", {})
    for run in args.runs:
        logs = len(list((Path(run) / "logs").glob("version_*")))
        if attempts.get(run, logs) != logs:  # the run was started again (resumed, or afresh): it compiles again
            state["records"].pop(run, None)
        attempts[run] = logs
        records = state["records"].setdefault(run, [])
        done = epochs_logged(Path(run))  # read while Lightning may rewrite the file: never less than before
        done = max(done, records[-1][1]) if records else done
        if not records or records[-1][1] != done:  # a record per change: the pace spans whole epochs
            records.append([now, done])
    projections, stop = triage(state, args.runs, args.epochs, args.deadline, now, args.final_s, args.settle_s)
    if stop is not None:  # the others' paces change: measured anew from here
        state["stopped_at"] = now
        state["records"] = {run: records[-1:] for run, records in state["records"].items() if run != stop}
    args.state.write_text(json.dumps(state))
    for p in projections:
        if p.ends_at is None:
            print(f"{Path(p.run).name}: {p.done}/{args.epochs} epochs, pace not measured yet")
        else:
            verdict = "in time" if p.ends_at <= args.deadline else f"{p.ends_at - args.deadline:.0f} s late"
            print(f"{Path(p.run).name}: {p.done}/{args.epochs} epochs, {p.seconds_per_epoch:.2f} s/epoch, ends in "
                  f"{p.ends_at - now:.0f} s (deadline in {args.deadline - now:.0f} s): {verdict}")  # fmt: skip
    if stop is not None:
        print(f"stop: {stop}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
