"""The run directory: its layout, its name, and reopening a run.

::

    <out>/<name>/
      config.json            the resolved config (preset + overrides)
      data.json              what using the model needs about its input: image size, channels,
                             mean, std, class names (written when training starts)
      checkpoints/last.ckpt  the Lightning checkpoint (weights, optimiser, schedule, bank or queue)
      logs/version_*/        one CSV log per attempt; metrics.csv joins them at the end
      summary.json           epochs, times, final and best kNN
      features/              evaluation features, cached per checkpoint
      plots/                 figures of ``crosslevel plot``
      *.json                 results of the eval / score commands (:func:`result_file`)

:func:`open_run` reopens a run for evaluation and use: config, trained module and -- only when
asked for -- its data; :func:`read_run` / :func:`list_runs` report a run's status and results.
Nothing heavy is imported with this module (the model and data stack load inside the functions that
need them), so that ``runs``, ``show`` and the checks before training answer at once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FIELDS, Config, apply_overrides, load_config, load_preset
from .errors import CrossLevelError
from .paths import check_creatable, check_run_name, read_json_object

if TYPE_CHECKING:
    from .data.datamodule import Data
    from .methods import ContrastiveModule

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
LOG_DIR = "logs"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
FEATURE_DIR = "features"
PLOT_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # logger=wandb's files (offline runs)
MLFLOW_DIR = "mlruns"  # logger=mlflow's local file store
RUN_NAME_ENV = "CROSSLEVEL_RUN_NAME"  # passes a generated run name to the processes Lightning launches


def checkpoint_of(run_dir: Path) -> Path:
    """The checkpoint a run directory resumes from and is evaluated with."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def discard_unsaved(run_dir: Path) -> None:
    """Remove what a run that failed before its first checkpoint wrote (config, data, logs), so that
    the same command starts it afresh; the folder goes too when nothing else is in it."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, DATA_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in (LOG_DIR, CHECKPOINT_DIR, TENSORBOARD_DIR, WANDB_DIR, MLFLOW_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def result_file(run_dir: Path, command: str, detail: str = "") -> Path:
    """Where a command writes its result: ``<command>[_<detail>].json`` (e.g. ``knn_f_I.json``)."""
    return Path(run_dir) / (f"{command}_{detail}.json" if detail else f"{command}.json")


def run_dir_of(cfg: Config) -> Path:
    """``out/name``; without a name ``<preset>-<time>``, or ``<preset>-job<id>`` when a multi-process
    launcher (torchrun, SLURM) started every rank, so that all ranks agree."""
    name = cfg.name or os.environ.get(RUN_NAME_ENV, "")
    if not name:
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        several = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1
        stamp = f"job{job}" if several and job and job != "none" else time.strftime("%Y%m%d-%H%M%S")
        name = f"{cfg.preset or 'run'}-{stamp}"
    return Path(cfg.out).expanduser() / name


UNTRAINED_KEYS = ("preset", "description", "data", "out", "name", "resume")  # name or place a run, do not shape it


def launch_rank() -> int:
    """This process's rank as a multi-process launcher (torchrun, SLURM, jsrun) set it; 0 for one process.
    Readable before any process group exists (Lightning reads the same variables)."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def check_new_run(cfg: Config) -> None:
    """``name=`` is a run name and the run directory can be created under ``out=``; a new run (no
    ``resume=``) must not write into an existing run directory. The latter is checked on rank 0 only:
    the other ranks of a multi-process launch may already see the folder rank 0 creates."""
    check_run_name(cfg.name)
    check_creatable(Path(cfg.out).expanduser(), f"out={cfg.out} cannot hold run directories")
    run_dir = run_dir_of(cfg)
    if launch_rank() == 0 and cfg.resume is None and (run_dir / CONFIG_FILE).exists():
        raise CrossLevelError(f"run directory {run_dir} already exists: resume={run_dir}, or choose another name=")


def resolve_resume(cfg: Config, overrides: list[str], preset: str | None = None) -> tuple[Config, Path]:
    """For ``resume=PATH`` (a checkpoint or a run directory): the run's saved config with
    ``overrides`` on top, and the checkpoint to continue from. The saved config wins over any
    preset: ``preset`` (one the command named explicitly) other than the run's is an error that
    names what it would have changed."""
    assert cfg.resume is not None
    target = Path(cfg.resume).expanduser().absolute()  # saved and printed as a new run's are
    checkpoint = checkpoint_of(target) if target.is_dir() else target
    if not checkpoint.is_file():
        raise CrossLevelError(f"no checkpoint to resume from at {checkpoint}")
    run_dir = checkpoint.parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise CrossLevelError(f"{checkpoint} is not inside a run directory (no {CONFIG_FILE} in {run_dir})")
    saved = load_config(run_dir / CONFIG_FILE)
    if saved.dataset == "digits":  # a run from before a data path for digits was an error saved the one it ignored
        saved = dataclasses.replace(saved, data=None)
    if preset is not None and preset != saved.preset:
        named = load_preset(preset)
        ignored = [key for key in dataclasses.asdict(saved) if key not in UNTRAINED_KEYS and getattr(named, key) != getattr(saved, key)]
        raise CrossLevelError(
            f"resume={run_dir} continues a run of preset {saved.preset or '(none)'} with its saved config, so "
            f"--config {preset} would be ignored (its keys that differ from the run's: {', '.join(ignored) or 'none'}): "
            "drop --config; change keys with key=value on top (e.g. epochs=300)"
        )
    resumed = apply_overrides(saved, [o for o in overrides if not o.startswith("resume=")])
    return dataclasses.replace(resumed, resume=str(checkpoint), out=str(run_dir.parent), name=run_dir.name), checkpoint


def merge_metrics(run_dir: Path) -> Path | None:
    """Write :func:`joined_metrics` to ``run_dir/metrics.csv`` (None, and nothing written, without rows)."""
    rows = joined_metrics(run_dir)
    if not rows:
        return None
    target = run_dir / METRICS_FILE
    _write_rows(target, rows, sorted({key for row in rows for key in row}))
    return target


def _attempt_logs(run_dir: Path) -> list[Path]:
    """Each training attempt's CSV log (``logs/version_*/metrics.csv``), oldest first."""
    return sorted((run_dir / LOG_DIR).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))


def _write_rows(target: Path, rows: list[dict[str, str]], keys: list[str]) -> None:
    """``rows`` as the CSV file ``target``, replaced at once: a reader sees the old file or the new one, never half of one."""
    partial = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, target)


def joined_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The CSV logs of every attempt (``logs/version_*/metrics.csv``) joined, with epochs counted from 1 as
    everywhere else (a row's ``epoch`` is the epoch it belongs to: the last of an N-epoch run is N); the
    logs keep Lightning's count from 0. An attempt resumed from a checkpoint older than where the one
    before it stopped (a failure between checkpoints) trains some steps again: the earlier rows it redoes
    give way (:func:`_redone`), so every epoch has one row."""
    rows: list[dict[str, str]] = []
    for part in _attempt_logs(run_dir):
        later = list(csv.DictReader(open(part, newline="")))
        steps, epochs = ([int(r[key]) for r in later if r.get(key)] for key in ("step", "epoch"))
        if steps and epochs:
            rows = [row for row in rows if not _redone(row, min(steps), min(epochs))]
        rows += later
    for row in rows:
        if row.get("epoch"):
            row["epoch"] = str(int(row["epoch"]) + 1)
    return rows


def log_after_training(run_dir: Path, epoch: int, values: dict[str, float]) -> None:
    """Add ``values`` (a kNN evaluated outside the training loop, for a run resumed only to finish) to the
    row of ``epoch`` (counted from 1) in the latest attempt's CSV log that has one, or as a row of that
    epoch at the end of the latest log; :func:`merge_metrics` then joins it as any other."""
    parts = _attempt_logs(run_dir)
    if not parts:
        return
    cells = {key: str(value) for key, value in values.items()}
    logs = {part: list(csv.DictReader(open(part, newline=""))) for part in parts}
    found = ((part, row) for part in reversed(parts) for row in reversed(logs[part]) if row.get("epoch") == str(epoch - 1) and not row.get("loss_step"))
    target, row = next(found, (parts[-1], None))
    if row is not None:
        row.update(cells)
    else:
        last = logs[target]
        last.append({"epoch": str(epoch - 1), "step": last[-1]["step"] if last else "0", **cells})
    _write_rows(target, logs[target], list(dict.fromkeys(key for logged in logs[target] for key in logged)))


def logged_knn(run_dir: Path) -> list[dict[str, float]]:
    """The kNN results the run's logs hold so far (a run still training, or stopped before its summary):
    ``{"epoch", "top1", "top5"}`` per evaluated epoch (counted from 1), in epoch order."""
    rows = joined_metrics(run_dir)  # read only: `runs` and `show` write nothing
    if not rows and (run_dir / METRICS_FILE).is_file():
        rows = list(csv.DictReader(open(run_dir / METRICS_FILE, newline="")))
    return [
        {"epoch": int(float(row["epoch"])), "top1": float(row["knn_top1"]), "top5": float(row.get("knn_top5") or "nan")}
        for row in rows if row.get("knn_top1") and row.get("epoch")
    ]  # fmt: skip


def current_metrics(run_dir: Path) -> Path | None:
    """``run_dir/metrics.csv`` as the logs stand now: joined again (:func:`merge_metrics`) when an attempt's
    log is newer than it -- a run still training, or one stopped before the end of training joined them
    -- or when there is none; None when the run has no log."""
    target = run_dir / METRICS_FILE
    logs = list((run_dir / LOG_DIR).glob("version_*/metrics.csv"))
    if logs and (not target.is_file() or max(log.stat().st_mtime for log in logs) > target.stat().st_mtime):
        return merge_metrics(run_dir)
    return target if target.is_file() else None


def _redone(row: dict[str, str], first_step: int, first_epoch: int) -> bool:
    """Whether a later attempt whose rows start at ``first_step`` and ``first_epoch`` redoes ``row``: its
    step is at or past that step, or it is an epoch's row (no ``loss_step``) of an epoch from there on."""
    if not row.get("step"):
        return False
    if int(row["step"]) >= first_step:
        return True
    return not row.get("loss_step") and bool(row.get("epoch")) and int(row["epoch"]) >= first_epoch


@dataclass(frozen=True)
class DataInfo:
    """What using a trained model needs about its input: images of ``size``×``size`` with ``channels``
    channels, normalised with ``mean`` / ``std``; ``classes`` names the labels (may be empty);
    ``num_train`` is the size of the training set (the NPID bank's rows)."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    num_train: int

    @classmethod
    def of(cls, cfg: Config, data: Data) -> DataInfo:
        train = data.train
        return cls(cfg.image_size or data.side, train.channels, tuple(train.mean), tuple(train.std), tuple(train.classes), len(train))


def save_data_info(run_dir: Path, info: DataInfo) -> None:
    (Path(run_dir) / DATA_FILE).write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")


def read_data_info(run_dir: Path, cfg: Config) -> DataInfo:
    """The run's ``data.json``; runs trained before it existed load their data once to find out."""
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        from .data.datamodule import load_data

        return DataInfo.of(cfg, load_data(cfg))
    values = read_json_object(path)
    try:
        return DataInfo(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})
    except TypeError as err:
        raise CrossLevelError(f"{path} is damaged ({err})") from None


def epochs_trained(checkpoint: dict[str, Any]) -> int:
    """The whole epochs a training checkpoint holds. Its ``epoch`` is Lightning's epoch counter, which
    one saved at an epoch's end has not advanced yet (epoch 3 done: 2); Lightning's own count, the
    epochs its loop has processed, is the one it resumes from."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):  # not written by a fit loop
        return int(checkpoint.get("epoch", 0))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a crosslevel training checkpoint on the CPU (memory-mapped); a missing or damaged file, one
    that is not a crosslevel checkpoint or one of a newer crosslevel is a :class:`CrossLevelError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CrossLevelError(f"checkpoint not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors, ... for a damaged file
        reason = str(err).strip().split(". ")[0]  # torch's first sentence; the rest is advice for its developers
        raise CrossLevelError(f"cannot read checkpoint {path} ({type(err).__name__}: {reason}); it is damaged or not a checkpoint") from None
    hparams = saved.get("hyper_parameters") if isinstance(saved, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("cfg"), dict) or "state_dict" not in saved:
        raise CrossLevelError(f"{path} is not a crosslevel training checkpoint (no saved config)")
    newer = sorted(set(hparams["cfg"]) - set(FIELDS))
    if newer:
        raise CrossLevelError(
            f"checkpoint {path} was written by a newer crosslevel (config keys this version does not know: "
            f"{', '.join(newer)}): upgrade crosslevel to use it"
        )
    return saved


def restore(module: ContrastiveModule, saved: dict, checkpoint: Path, cfg: Config, num_train: int, in_channels: int) -> None:
    """Load ``saved``'s weights into ``module`` after checking it is a checkpoint of the same model."""
    from .checkpointing import check_compatible

    check_compatible(saved, checkpoint, cfg, num_train, in_channels)
    try:
        module.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].strip()
        raise CrossLevelError(f"checkpoint {checkpoint} does not fit this model: {reason}") from None


def load_run_config(run_dir: Path) -> Config:
    """The saved config of a run directory; a clear error when ``run_dir`` is not one."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CrossLevelError(f"{run_dir} is not a run directory (not a folder)")
    if not path.is_file():
        raise CrossLevelError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return load_config(path)


@dataclass(frozen=True)
class RunInfo:
    """One run directory as ``crosslevel runs`` and ``show`` report it: its config, its
    ``summary.json`` (empty until a training attempt ends), the epochs done and its status:
    ``finished`` (summary of all ``cfg.epochs``), ``interrupted`` (a checkpoint, not finished) or
    ``failed`` (no checkpoint)."""

    path: Path
    cfg: Config
    summary: dict
    epochs_done: int
    status: str

    @property
    def method(self) -> str:
        """npid, cld (NPID + CLD), moco, cldm (MoCo + CLD), simclr, simclr+cld, byol or byol+cld."""
        cld = self.cfg.cld_weight > 0
        named = {"npid": "cld", "moco": "cldm"}  # the paper's names for CLD on its two instance methods
        return (named.get(self.cfg.instance, f"{self.cfg.instance}+cld") if cld else self.cfg.instance)


def read_run(run_dir: Path) -> RunInfo:
    """The :class:`RunInfo` of ``run_dir``."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    path, checkpoint = run_dir / SUMMARY_FILE, checkpoint_of(run_dir)
    summary = read_json_object(path) if path.is_file() else {}
    if summary.get("epochs") == cfg.epochs:
        return RunInfo(run_dir, cfg, summary, cfg.epochs, "finished")
    if checkpoint.is_file():
        return RunInfo(run_dir, cfg, summary, epochs_trained(read_checkpoint(checkpoint)), "interrupted")
    return RunInfo(run_dir, cfg, summary, 0, "failed")


def list_runs(folder: Path) -> tuple[list[RunInfo], list[str]]:
    """The runs directly under ``folder`` (sub-folders with a ``config.json``), by name, and what is
    wrong with each one that cannot be read (one damaged run does not hide the others)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CrossLevelError(f"no folder of runs at {folder}")
    runs, problems = [], []
    for path in sorted(folder.iterdir()):
        if (path / CONFIG_FILE).is_file():
            try:
                runs.append(read_run(path))
            except CrossLevelError as err:
                problems.append(str(err))
    return runs, problems


def open_run(run_dir: Path, with_data: bool = False) -> tuple[Config, ContrastiveModule, Data | None]:
    """Config, trained module (last checkpoint, eval mode, on the CPU) and, with ``with_data``, the
    run's data (its splits rebuilt from the config); clear errors for a missing config or checkpoint."""
    from .data.datamodule import load_data
    from .methods import ContrastiveModule

    run_dir = Path(run_dir)
    cfg, checkpoint = load_run_config(run_dir), checkpoint_of(run_dir)
    if not checkpoint.is_file():
        raise CrossLevelError(f"no checkpoint in {run_dir} (expected {checkpoint})")
    saved = read_checkpoint(checkpoint)
    data = load_data(cfg) if with_data else None
    hparams = saved.get("hyper_parameters", {})
    num_train = len(data.train) if data is not None else hparams.get("num_train", 0)
    in_channels = data.train.channels if data is not None else hparams.get("in_channels", 0)
    image_size = (cfg.image_size or data.side) if data is not None else hparams.get("image_size", 0)
    module = ContrastiveModule(cfg, num_train, in_channels, image_size)
    restore(module, saved, checkpoint, cfg, num_train, in_channels)
    return cfg, module.eval(), data
