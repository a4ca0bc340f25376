"""``tinytrace bench generate|train|eval``: benchmarks that print one JSON line.

``generate`` measures single-core throughput of the data pipeline in accepted snippets per
second: ``generate_only`` (generator), ``settrace`` (generator + reference tracer),
``fast`` (generator + fast tracer, as the pipeline runs them) and ``pipeline`` (generator +
fast tracer + filters + text and tokens + hash, one build chunk at a time), each on the same
seed in the same run, in interleaved rounds whose best counts (a shared machine is noisy); and
``pipeline_pluggable``, the same records made through the context-stack generator running
``DefaultRules`` and the general tracer (the reference the default rules' fast path is
tested against), so that ``pipeline_over_pluggable`` is a ratio within one run.
"""
from __future__ import annotations

import json
import platform
import random
import time
from collections import Counter

from tinytrace.lang.config import PRESETS, get_preset

from .cli import at_least, key_value


def bench_generate(preset: str = "base", seconds: float = 3.0, seed: int = 0,
                   rounds: int = 5) -> dict:
    from tinytrace.lang.fast import default_fast_path
    from tinytrace.lang.generator import DefaultRules, Generator
    from tinytrace.lang.program import render
    from tinytrace.lang.tracer import Rejected, run, run_settrace

    from .data import BuildConfig, Pipeline

    cfg = get_preset(preset)
    gen = Generator(cfg)
    fused = default_fast_path(cfg, run=True)
    vr, cap = cfg.value_range, cfg.max_loop_iterations
    chunk = BuildConfig.chunk_size

    def with_tracer(trace):
        def step(rng):
            lines = gen.generate(rng)
            try:
                trace(lines)
                return 1
            except Rejected:
                return 0

        return step

    def pipeline_of(pipe):
        # the corpus builder's path: one chunk of accepted records at a time
        stats: Counter = Counter()
        return lambda rng: len(pipe.records(rng, chunk, stats)["code"])

    steps = {
        "generate_only": lambda rng: gen.generate(rng) and 1,
        "settrace": with_tracer(lambda lines: run_settrace(render(lines), vr, cap)),
        # the pipeline's tracer: the default rules' fast path runs each snippet as it writes it
        "fast": (lambda rng: fused(rng)[3] is None) if fused
        else with_tracer(lambda lines: run(lines, vr, cap)),
        "pipeline": pipeline_of(Pipeline(cfg)),
        "pipeline_pluggable": pipeline_of(Pipeline(cfg, rules=DefaultRules(cfg))),
    }
    out = {
        "preset": preset,
        "unit": "accepted snippets per second, one core",
        "statistic": f"best of {rounds} interleaved rounds",
        **_rates(steps, seconds, rounds, seed),
        "python": platform.python_version(),
        "seconds_each": seconds,
    }
    out["fast_over_settrace"] = out["fast"] / out["settrace"]
    out["pipeline_over_pluggable"] = out["pipeline"] / out["pipeline_pluggable"]
    for k in list(steps) + ["fast_over_settrace", "pipeline_over_pluggable"]:
        out[k] = round(out[k], 2)
    return out


def _rates(steps: dict, seconds: float, rounds: int, seed: int) -> dict:
    """Items per second of each ``step(rng) -> items``, run for ``seconds`` in all, in
    ``rounds`` rounds that take turns (so a slow spell of a shared machine hits all of them):
    the best round of each (timeit's advice: the others measure interference)."""
    rngs = {k: random.Random(seed) for k in steps}
    best = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for k, step in steps.items():
            rng, n = rngs[k], 0
            t0 = time.perf_counter()
            deadline = t0 + seconds / rounds
            while (t := time.perf_counter()) < deadline or not n:
                n += step(rng)
            best[k] = max(best[k], n / (t - t0))
    return best


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
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    t.add_argument("--micro-batch-size", type=int, default=None)
    t.add_argument("--compile", action="store_true")
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
                   help="comma list of cached, uncached, static (speedup: first over second)")
    e.add_argument("--max-new-tokens", type=int, default=None, help="cap per trace")
    e.add_argument("--device", default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)
    le = bsub.add_parser("learn", help="tokens and seconds to high ID exact match (a base run)",
                         description="Train a scale's base model with a named recipe, evaluate "
                                     "ID exact match at fixed fractions of its steps, print the "
                                     "curve and the tokens/seconds to 50/90/95/99%% EM.")
    le.add_argument("--scale", default="cpu", help="smoke, cpu, gpu or paper")
    le.add_argument("--recipe", default="scale", help="a name in tinytrace.learn.RECIPES")
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
    le.add_argument("--json", action="store_true", help="print only the JSON line")
    le.set_defaults(func=_learn)


def _generate(args) -> int:
    result = bench_generate(args.preset, args.seconds, args.seed, args.rounds)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
    return 0


def _train(args) -> int:
    from .train import bench_train

    result = bench_train(model=args.model, steps=args.steps, batch_size=args.batch_size,
                         micro_batch_size=args.micro_batch_size, compile=args.compile,
                         device=args.device)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
    return 0


def _learn(args) -> int:
    from tinytrace.experiments.learn import THRESHOLDS, bench_learn

    result = bench_learn(args.scale, args.recipe, minutes=args.minutes, points=args.points,
                         cache_dir=args.cache_dir, out_dir=args.out, threads=args.threads,
                         seed=args.seed, train_overrides=dict(args.train_arg),
                         model_overrides=dict(args.model_arg), corpus_snippets=args.corpus_snippets,
                         max_steps=args.max_steps, eval_limit=args.eval_limit,
                         progress=not args.no_progress,
                         report=(lambda _: None) if args.json else print)
    if not args.json:
        for t in THRESHOLDS:
            key = f"to_{round(100 * t)}"
            print(f"{key:>6}: {result[key]}")
    print(json.dumps(result))
    return 0


def _eval(args) -> int:
    from .evaluate import bench_eval

    result = bench_eval(model=args.model, checkpoint=args.checkpoint, limit=args.limit,
                        batch_size=args.batch_size, data=args.data, config=args.config,
                        modes=args.modes, max_new_tokens=args.max_new_tokens, device=args.device)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result))
    return 0
