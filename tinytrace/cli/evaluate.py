"""``tinytrace eval``: greedy exact-match evaluation of a checkpoint (:func:`tinytrace.evaluate.evaluate`)."""
from __future__ import annotations

import json
from pathlib import Path

from tinytrace.data import load
from tinytrace.evaluate import evaluate, resolve_device, save_results
from tinytrace.model import load_checkpoint


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="greedy exact-match evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder with model.safetensors + config.json")
    p.add_argument("--data", required=True, help="built dataset folder (tinytrace data build)")
    p.add_argument("--config", default="base", help="dataset config (preset name)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-cache", action="store_true", help="re-encode the window for every token")
    p.add_argument("--max-len-factor", type=float, default=2.0,
                   help="generation cap: factor * target length + 16 tokens")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=None, help="folder for records.jsonl and summary.json")
    p.add_argument("--json", action="store_true", help="print only one JSON line")
    p.set_defaults(func=handler)


def handler(args) -> int:
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be >= 1")
    if not args.max_len_factor > 0:
        raise ValueError(f"--max-len-factor must be > 0, got {args.max_len_factor}")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; it names a folder for records.jsonl and summary.json")
    device = resolve_device(args.device)  # before the work: a bad device fails at once
    model = load_checkpoint(args.checkpoint)
    data = load(args.data, args.config, args.split)
    df, summary = evaluate(model, data, batch_size=args.batch_size, limit=args.limit,
                           device=device, use_cache=not args.no_cache,
                           max_len_factor=args.max_len_factor, compile=args.compile, progress=True)
    summary.update(checkpoint=str(args.checkpoint), data=str(args.data), config=args.config, split=args.split)
    if args.out:
        save_results(df, summary, args.out, args.checkpoint)
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>22}: {v}")
    return 0
