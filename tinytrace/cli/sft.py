"""``tinytrace sft``: LoRA fine-tuning with instruction masking (:func:`tinytrace.train.sft.finetune`)."""
from __future__ import annotations

import json
import os

from tinytrace.train.sft import SFT_PRESETS, finetune, get_sft_config

# (option, type); each sets the SFTConfig field of the same name over the preset
_OPTIONS = (("rank", int), ("alpha", float), ("lr", float), ("epochs", int), ("data-size", int),
            ("batch-size", int), ("micro-batch-size", int), ("block-size", int),
            ("val-examples", int), ("seed", int), ("save-every-minutes", float))


def add_cli(sub) -> None:
    p = sub.add_parser("sft", help="LoRA fine-tuning with instruction masking",
                       description="Fine-tune a trained run with LoRA and instruction masking "
                                   "(paper Sec. 4.4, App. G.1); the best merged model goes to --out.")
    p.add_argument("--base", required=True, help="run folder of the pre-trained model")
    p.add_argument("--data", required=True, help="dataset folder (tinytrace data build --out)")
    p.add_argument("--config", required=True, help="dataset config name inside --data")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(SFT_PRESETS)}")
    for flag, typ in _OPTIONS:
        p.add_argument(f"--{flag}", type=typ)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out "
                   "(after an interrupt: the same command with --resume added)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=handler)


def handler(args) -> int:
    keys = [flag.replace("-", "_") for flag, _ in _OPTIONS]
    cfg = get_sft_config(args.preset, **{k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    summary = finetune(args.base, args.data, args.config, args.out, cfg,
                       progress=not args.no_progress, device=args.device, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    return 0
