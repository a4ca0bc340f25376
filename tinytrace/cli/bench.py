"""``tinytrace bench generate|train|eval|learn``: each benchmark prints a readable table, then
one JSON line (``--json``: the JSON line only). Each subcommand imports only what it measures."""
from __future__ import annotations

import json
import sys

from tinytrace.lang.config import PRESETS

from . import at_least, key_value


def add_cli(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print one JSON line")
    bsub = p.add_subparsers(dest="bench_command", required=True,
                            metavar="{generate,train,eval,learn}")
    g = bsub.add_parser("generate", help="data pipeline throughput (one core)")
    g.add_argument("--preset", default="base", choices=sorted(PRESETS), metavar="PRESET")
    g.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    g.add_argument("--rounds", type=at_least(1), default=5, help="rounds the time is split in")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print only the JSON line")
    g.set_defaults(func=_generate)
    t = bsub.add_parser("train", help="training throughput (tokens/s, MFU)")
    t.add_argument("--model", default="tiny", help="model preset")
    t.add_argument("--model-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="a ModelConfig field over the preset, e.g. head_pad_multiple=0 (repeatable)")
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    t.add_argument("--micro-batch-size", type=int, default=None)
    t.add_argument("--compile", action="store_true")
    t.add_argument("--compile-mode", default="default", help="torch.compile mode: default, "
                   "reduce-overhead, max-autotune or max-autotune-no-cudagraphs")
    t.add_argument("--compile-optimizer", action="store_true",
                   help="run the optimizer steps through torch.compile too")
    t.add_argument("--warmup", type=at_least(1), default=2, help="untimed steps first")
    t.add_argument("--preset", default="paper", help="train preset whose optimizer, loss and "
                   "precision are measured (tinytrace.train.TRAIN_PRESETS)")
    t.add_argument("--device", default=None)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_train)
    e = bsub.add_parser("eval", help="evaluation throughput, with and without the KV cache")
    e.add_argument("--model", default="tiny", help="model preset (random weights)")
    e.add_argument("--checkpoint", default=None, help="a trained run folder instead")
    e.add_argument("--limit", type=int, default=64, help="number of traces")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--data", default=None, help="a Hub-layout folder (default: build base traces)")
    e.add_argument("--config", default="base", help="config of --data")
    e.add_argument("--modes", default="cached,uncached",
                   help="comma list of cached, uncached, static, static-full, "
                   "static-compiled, static-autocast (speedup: first over second)")
    e.add_argument("--max-new-tokens", type=int, default=None, help="cap per trace")
    e.add_argument("--profile-steps", type=at_least(0), default=0, help="then profile static "
                   "decoding of the first batch for this many tokens (torch.profiler)")
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)
    le = bsub.add_parser("learn", help="tokens and seconds to high ID exact match (a base run)",
                         description="Train a scale's base model with a named recipe, evaluate "
                                     "ID exact match at fixed fractions of its steps, print the "
                                     "curve and the tokens/seconds to 50/90/95/99%% EM.")
    le.add_argument("--scale", default="cpu", help="smoke, cpu, cpu-long, gpu or paper")
    le.add_argument("--recipe", default="scale", help="a name in tinytrace.experiments.learn.RECIPES")
    le.add_argument("--minutes", type=at_least(0.01, float), default=None,
                    help="cap on training time (the curve stops at the first point past it)")
    le.add_argument("--points", type=at_least(1), default=10, help="evaluation points")
    le.add_argument("--threads", type=at_least(1), default=None, help="torch threads")
    le.add_argument("--max-steps", type=at_least(1), default=None,
                    help="end the curve at this step (the schedule still spans the recipe)")
    le.add_argument("--eval-limit", type=at_least(1), default=None,
                    help="evaluate only this many test traces")
    le.add_argument("--train-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                    help="a TrainConfig field over the recipe (repeatable)")
    le.add_argument("--model-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                    help="a ModelConfig field over the recipe (repeatable)")
    le.add_argument("--corpus-snippets", type=at_least(16), default=None,
                    help="base corpus size over the recipe's")
    le.add_argument("--cache-dir", default=None, help="corpora cache (default: a temp folder)")
    le.add_argument("--out", default=None, help="run folder (default: a new one in the cache)")
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--no-progress", action="store_true")
    le.add_argument("--json", action="store_true",
                    help="print only the JSON line (the curve points go to stderr)")
    le.set_defaults(func=_learn)


def _show(result: dict, json_only: bool, keys=None) -> int:
    if not json_only:
        for k in keys or result:
            print(f"{k:>22}: {result[k]}")
    print(json.dumps(result))
    return 0


def _generate(args) -> int:
    from tinytrace.bench import bench_generate

    return _show(bench_generate(args.preset, args.seconds, args.seed, args.rounds), args.json)


def _train(args) -> int:
    from tinytrace.train.bench import bench_train

    return _show(bench_train(model=args.model, steps=args.steps, batch_size=args.batch_size,
                             micro_batch_size=args.micro_batch_size, compile=args.compile,
                             device=args.device, preset=args.preset,
                             compile_mode=args.compile_mode, warmup=args.warmup,
                             compile_optimizer=args.compile_optimizer,
                             model_overrides=dict(args.model_arg)), args.json)


def _eval(args) -> int:
    from tinytrace.evaluate.bench import bench_eval

    return _show(bench_eval(model=args.model, checkpoint=args.checkpoint, limit=args.limit,
                            batch_size=args.batch_size, data=args.data, config=args.config,
                            modes=args.modes, max_new_tokens=args.max_new_tokens,
                            device=args.device, profile_steps=args.profile_steps), args.json)


def _learn(args) -> int:
    from tinytrace.experiments.learn import THRESHOLDS, bench_learn
    from tinytrace.interrupt import Interrupted

    try:
        result = bench_learn(args.scale, args.recipe, minutes=args.minutes, points=args.points,
                             cache_dir=args.cache_dir, out_dir=args.out, threads=args.threads,
                             seed=args.seed, train_overrides=dict(args.train_arg),
                             model_overrides=dict(args.model_arg),
                             corpus_snippets=args.corpus_snippets, max_steps=args.max_steps,
                             eval_limit=args.eval_limit, progress=not args.no_progress,
                             report=(lambda line: print(line, file=sys.stderr)) if args.json
                             else print)
    except Interrupted as e:  # a benchmark measures a fresh run: resuming would skew its times
        again = "with a new --out" if args.out else "the same command"
        raise Interrupted(e.signum, f"{e.kept}; the corpus stays cached, the curve is not "
                                    f"measured: to measure it, rerun {again}", rerun=False) from None
    return _show(result, args.json, [f"to_{round(100 * t)}" for t in THRESHOLDS])
