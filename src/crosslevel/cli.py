"""The ``crosslevel`` command: train, eval knn, presets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_PRESET, Config, apply_overrides, describe_keys, load_preset, preset_summary
from .errors import CrossLevelError, TrainingInterrupted


def _train(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    from .training import resolve_resume, train

    if args.help_keys:
        print("config keys (set any with key=value):\n" + describe_keys())
        return 0
    overrides = list(args.overrides) + ([f"data={args.data}"] if args.data else [])
    cfg: Config = apply_overrides(load_preset(args.config), overrides)
    if cfg.resume:
        cfg, _ = resolve_resume(cfg, overrides)
    run_dir, knn = train(cfg)
    if rank_zero_only.rank != 0:  # under torchrun / SLURM every rank runs this command; one reports
        return 0
    print(f"run directory: {run_dir}")
    if knn is not None:
        print(f"kNN top-1: {knn['top1']:.2f}%  top-5: {knn['top5']:.2f}%  (k={cfg.knn_k}, σ={cfg.knn_temperature}, f_I)")
    return 0


def _eval_knn(args: argparse.Namespace) -> int:
    from .training import evaluate_knn, load_run

    cfg, module, data = load_run(Path(args.run_dir))
    knn = evaluate_knn(module, data, cfg, args.feature)
    out = Path(args.run_dir) / f"knn_{args.feature}.json"
    out.write_text(json.dumps({"feature": args.feature, "k": cfg.knn_k, "temperature": cfg.knn_temperature, **knn}, indent=2) + "\n")
    print(f"kNN top-1: {knn['top1']:.2f}%  top-5: {knn['top5']:.2f}%  (k={cfg.knn_k}, σ={cfg.knn_temperature}, {args.feature})")
    return 0


def _presets(args: argparse.Namespace) -> int:
    rows = preset_summary()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslevel", description="Cross-Level Discrimination (CLD), NPID and MoCo.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a preset plus key=value overrides")
    train.add_argument("--config", default=DEFAULT_PRESET, help=f"preset name (default {DEFAULT_PRESET}); see `crosslevel presets`")
    train.add_argument("--data", help="data set path (same as data=PATH)")
    train.add_argument("--help-keys", action="store_true", help="list every config key with its type and default")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 batch_size=128")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained run")
    metrics = evaluate.add_subparsers(dest="metric", required=True)
    knn = metrics.add_parser("knn", help="weighted kNN top-1/top-5 (k, σ from the run's config)")
    knn.add_argument("run_dir")
    knn.add_argument("--feature", choices=("f", "f_I", "f_G"), default="f_I")
    knn.set_defaults(func=_eval_knn)

    presets = commands.add_parser("presets", help="list the presets with a one-line description each")
    presets.set_defaults(func=_presets)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand before, between or after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except CrossLevelError as err:
        print(f"crosslevel: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"crosslevel: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("crosslevel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
