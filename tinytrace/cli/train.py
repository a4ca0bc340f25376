"""``tinytrace train``: pre-training with Accelerate (:func:`tinytrace.train.train`)."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from tinytrace.cli import key_value
from tinytrace.model import ModelConfig, get_model_config
from tinytrace.presets import check_fields
from tinytrace.train import (
    COMPILE_MODES,
    OPTIMIZERS,
    TRAIN_PRESETS,
    TrainConfig,
    get_train_config,
    read_run,
    train,
)

# command-line option -> TrainConfig field
_ARG_FIELDS = {"epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
               "micro_batch_size": "micro_batch_size", "block_size": "block_size",
               "lr": "lr_peak", "lr_min": "lr_min", "weight_decay": "weight_decay",
               "seed": "seed", "optimizer": "optimizer", "muon_lr": "muon_lr",
               "state_loss_weight": "state_loss_weight",
               "save_every": "save_every", "save_every_minutes": "save_every_minutes",
               "log_every": "log_every",
               "val_windows": "val_windows", "mixed_precision": "mixed_precision",
               "compile": "compile", "compile_mode": "compile_mode",
               "compile_optimizer": "compile_optimizer"}


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train a model with Accelerate",
                       description="Train on random windows of a built dataset's token stream "
                                   "(paper App. C.1, C.5). Run with `accelerate launch -m "
                                   "tinytrace train ...` for several GPUs or processes.")
    p.add_argument("--data", required=True, help="dataset folder (tinytrace data build --out)")
    p.add_argument("--config", required=True, help="dataset config name inside --data")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, run.json")
    p.add_argument("--model", default=None, help="model preset (paper, tiny, small, medium)")
    p.add_argument("--model-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="override a model config field, e.g. pe=rpe (repeatable)")
    p.add_argument("--train-preset", default=None, help=f"one of {', '.join(TRAIN_PRESETS)} (default paper)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps "
                   "(the schedule still spans --epochs)")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step, all processes")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass and process")
    p.add_argument("--block-size", type=int, help="training window (default: model context)")
    p.add_argument("--lr", type=float, help="peak LR (lr-min defaults to lr/10)")
    p.add_argument("--lr-min", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw (the paper's) or muon (hidden "
                   "matrices; AdamW for the rest)")
    p.add_argument("--muon-lr", type=float, help="peak LR of the Muon group (default: --lr)")
    p.add_argument("--state-loss-weight", type=float, help="weight of the state-list targets "
                   "in the loss (default 1: the paper's mean cross-entropy)")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--save-every-minutes", type=float, help="wall clock between checkpoints "
                   "(default 10; 0: off)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--val-windows", type=int)
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile mode with "
                   "--compile (default: default)")
    p.add_argument("--compile-optimizer", action="store_true", default=None,
                   help="run the optimizer steps through torch.compile too")
    p.add_argument("--resume", action="store_true", help="continue the run in --out if any "
                   "(after an interrupt: the same command with --resume added)")
    p.add_argument("--log-with", default=None, help="Accelerate tracker (tensorboard, wandb, ...)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=handler)


def configs_from_args(args) -> tuple[TrainConfig, ModelConfig]:
    """Train and model configs: the presets (default paper) with the explicit arguments over
    them. When resuming, a preset or argument left out takes the saved run's value, so the
    command that started a run, rerun with --resume, gives its configs back; a value that
    conflicts with the saved run's is refused by :func:`tinytrace.train.check_resume`."""
    model_args = dict(args.model_arg)
    if args.resume and (Path(args.out) / "run.json").exists():
        tc, mc, _ = read_run(args.out)
        tc = get_train_config(args.train_preset) if args.train_preset else tc
        mc = get_model_config(args.model) if args.model else mc
        check_fields(ModelConfig, model_args)
        mc = replace(mc, **model_args)
    else:
        mc = get_model_config(args.model or "paper", **model_args)
        tc = get_train_config(args.train_preset or "paper")
    changes = {f: getattr(args, a) for a, f in _ARG_FIELDS.items() if getattr(args, a) is not None}
    if "lr_peak" in changes and "lr_min" not in changes:
        changes["lr_min"] = changes["lr_peak"] / 10
    return replace(tc, **changes), mc


def handler(args) -> int:
    tc, mc = configs_from_args(args)
    summary = train(tc, mc, args.data, args.config, args.out, resume=args.resume,
                    log_with=args.log_with, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
