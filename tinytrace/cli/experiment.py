"""``tinytrace experiment NAME --scale S --out DIR``: run one of the paper's experiments;
``--list-runs`` prints one command per training run (and, on stderr, the runs of other
experiments or scales that the evaluation needs), ``--run INDEX`` trains only that run."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from tinytrace.cli import at_least
from tinytrace.experiments import (
    EXPERIMENTS,
    SCALES,
    evaluate_trained,
    run_commands,
    run_experiment,
    run_training,
    training_runs,
)
from tinytrace.experiments.cache import NotTrained, WeightsMissing
from tinytrace.experiments.jobs import LAUNCHER
from tinytrace.experiments.runners import PrerequisiteMissing, prerequisites
from tinytrace.interrupt import Interrupted

# the printed table: what names a row, then its scores (every column is in results.csv)
KEYS = ("model", "test_set", "condition")
VARYING = ("corpus", "epoch", "subset", "seed")  # shown where they tell rows apart
SCORES = ("exact_match", "n", "step_em_tf", "final_state_match")


def shown_columns(df) -> list[str]:
    """The columns the CLI prints: the keys, those of :data:`VARYING` that take more than one
    value (an id_robustness row is known by its corpus, epoch and subset), the scores."""
    return ([c for c in KEYS if c in df.columns]
            + [c for c in VARYING if c in df.columns and df[c].nunique(dropna=False) > 1]
            + [c for c in SCORES if c in df.columns])


def add_cli(sub) -> None:
    p = sub.add_parser("experiment", help="run one of the paper's experiments",
                       description="Run an experiment (--out), or split its training runs over "
                                   "machines: --list-runs prints one command per run, each "
                                   "trains that run (--run INDEX) into the shared --cache-dir; "
                                   "the experiment run afterwards with that cache reuses them "
                                   "(stderr names the runs of other experiments it also needs).")
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--scale", default="smoke", choices=list(SCALES))
    what = p.add_mutually_exclusive_group()
    what.add_argument("--out", help="writes results.csv and config.json here")
    what.add_argument("--list-runs", action="store_true",
                      help="print one shell command per training run and exit (trains nothing)")
    what.add_argument("--run", type=at_least(0), metavar="INDEX",
                      help="train only run INDEX of --list-runs into --cache-dir")
    what.add_argument("--evaluate-trained", action="store_true",
                      help="evaluate into --cache-dir the runs already trained there, in order, "
                           "training nothing (stops at the first run not trained)")
    p.add_argument("--no-train", action="store_true",
                   help="with --out: train nothing, and fail at the first run that is not in "
                        "--cache-dir (after the runs of --list-runs were trained elsewhere)")
    p.add_argument("--launcher", default=LAUNCHER,
                   help=f"what --list-runs starts each run with (default: {LAUNCHER})")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="cpu: hide the GPUs; cuda: fail unless one is visible (default: the GPU "
                        "when one is visible; choose one with CUDA_VISIBLE_DEVICES)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    """Run the command; on a signal, say what the cache kept: the same command continues
    from there (the cache resumes an unfinished run from its saved state)."""
    kept = f"the runs and evaluations finished before are kept in {args.cache_dir}"
    try:
        return _run(args)
    except Interrupted as e:  # stopped at a training step or between data chunks
        raise Interrupted(e.signum, f"{e.kept}; {kept}", resume_flag=None) from None
    except KeyboardInterrupt as e:  # elsewhere (loading, evaluating): SIGINT, or SIGTERM via main
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        raise Interrupted(signum, kept, resume_flag=None) from None


def _run(args) -> int:
    if args.no_train and args.out is None:
        raise ValueError("--no-train goes with --out (--evaluate-trained also trains nothing)")
    if args.list_runs:
        runs = training_runs(args.name, args.scale, args.seed)
        for cmd in run_commands(args.name, args.scale, args.cache_dir, args.seed, args.launcher,
                                args.device):
            print(cmd)
        if any(r.after_first for r in runs):
            sys.stderr.write("runs 1 ... start after run 0 has finished: they need what it "
                             "builds\n")
        for need in prerequisites(args.name, args.scale, args.seed):
            sys.stderr.write(f"the evaluation (--out) also needs {need.label}, not a run listed "
                             f"here; first: {_command(need, args)}\n")
        return 0
    if args.run is not None:
        folder = run_training(args.name, args.run, args.scale, args.cache_dir, args.seed,
                              args.device, progress=not args.quiet)
        label = training_runs(args.name, args.scale, args.seed)[args.run].label
        print(f"trained run {args.run} ({label}) of {args.name} at scale {args.scale}: {folder}")
        return 0
    if args.evaluate_trained:
        print(evaluate_trained(args.name, args.scale, args.cache_dir, args.seed, args.device,
                               progress=not args.quiet))
        return 0
    if args.out is None:
        raise ValueError("give --out (run the experiment), --list-runs, --run INDEX or "
                         "--evaluate-trained")
    try:
        df = run_experiment(args.name, args.scale, args.out, args.cache_dir, args.seed,
                            args.device, progress=not args.quiet, train=not args.no_train)
    except NotTrained as e:
        if not args.no_train:
            raise
        if isinstance(e, PrerequisiteMissing):
            raise ValueError(f"{e}, and --no-train trains nothing: train it first: "
                             f"{_command(e.needed, args)}") from None
        again = ("drop --no-train to train it again" if isinstance(e, WeightsMissing) else
                 "train it first (--list-runs, --run INDEX) or drop --no-train")
        raise ValueError(f"{e}, and --no-train trains nothing: {again}") from None
    print(df[shown_columns(df)].to_string(index=False))
    print(f"wrote {Path(args.out) / 'results.csv'}")
    return 0


def _command(need, args) -> str:
    """The command that trains the prerequisite ``need`` into this command's cache."""
    return run_commands(need.experiment, need.scale, args.cache_dir, args.seed, args.launcher,
                        args.device)[need.index]
