"""``tinytrace experiment NAME --scale S --out DIR``: run one of the paper's experiments."""
from __future__ import annotations

from pathlib import Path

from tinytrace.experiments import EXPERIMENTS, SCALES, run_experiment

SHOWN = ("model", "test_set", "condition", "exact_match", "n", "step_em_tf", "final_state_match")


def add_cli(sub) -> None:
    p = sub.add_parser("experiment", help="run one of the paper's experiments")
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--scale", default="smoke", choices=list(SCALES))
    p.add_argument("--out", required=True, help="writes results.csv and config.json here")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    df = run_experiment(args.name, args.scale, args.out, args.cache_dir, args.seed, args.device,
                        progress=not args.quiet)
    print(df[[c for c in SHOWN if c in df.columns]].to_string(index=False))
    print(f"wrote {Path(args.out) / 'results.csv'}")
    return 0
