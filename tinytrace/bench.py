"""``tinytrace bench generate|train|eval``: benchmarks that print one JSON line.

``generate`` measures single-core throughput of the data pipeline in accepted snippets per
second: ``generate_only`` (generator), ``settrace`` (generator + reference tracer),
``fast`` (generator + fast tracer, as the pipeline runs them) and ``pipeline`` (generator +
fast tracer + filters + text and tokens + hash), each on the same seed in the same run; and
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

from .config import PRESETS, get_preset


def bench_generate(preset: str = "base", seconds: float = 3.0, seed: int = 0) -> dict:
    from .data import Pipeline
    from .generator import DefaultRules, Generator
    from .program import render
    from .tracer import Rejected, run, run_rows, run_settrace

    cfg = get_preset(preset)
    gen = Generator(cfg)
    vr, cap = cfg.value_range, cfg.max_loop_iterations

    def timed(step) -> float:
        rng = random.Random(seed)
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(200):
                n += step(rng)
            t = time.perf_counter()
            if t >= deadline:
                return n / (t - t0)

    def generate_only(rng):
        gen.generate(rng)
        return 1

    def with_tracer(trace):
        def step(rng):
            lines = gen.generate(rng)
            try:
                trace(lines)
                return 1
            except Rejected:
                return 0

        return step

    def fast_rows(rng):
        # the pipeline's path for the default rules: tuple rows, traced top to bottom
        try:
            run_rows(gen.fast(rng), vr)
            return 1
        except Rejected:
            return 0

    def pipeline_of(pipe):
        stats: Counter = Counter()
        return lambda rng: pipe.sample(rng, stats) is not None

    out = {
        "preset": preset,
        "unit": "accepted snippets per second, one core",
        "generate_only": timed(generate_only),
        "settrace": timed(with_tracer(lambda lines: run_settrace(render(lines), vr, cap))),
        "fast": timed(fast_rows if gen.fast else with_tracer(lambda lines: run(lines, vr, cap))),
        "pipeline": timed(pipeline_of(Pipeline(cfg))),
        "pipeline_pluggable": timed(pipeline_of(Pipeline(cfg, rules=DefaultRules(cfg)))),
        "python": platform.python_version(),
        "seconds_each": seconds,
    }
    out["fast_over_settrace"] = out["fast"] / out["settrace"]
    out["pipeline_over_pluggable"] = out["pipeline"] / out["pipeline_pluggable"]
    for k in ("generate_only", "settrace", "fast", "pipeline", "pipeline_pluggable",
              "fast_over_settrace", "pipeline_over_pluggable"):
        out[k] = round(out[k], 2)
    return out


def add_cli(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print one JSON line")
    bsub = p.add_subparsers(dest="bench_command", required=True, metavar="{generate,train,eval}")
    g = bsub.add_parser("generate", help="data pipeline throughput (one core)")
    g.add_argument("--preset", default="base", choices=sorted(PRESETS), metavar="PRESET")
    g.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
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


def _generate(args) -> int:
    result = bench_generate(args.preset, args.seconds, args.seed)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
    return 0


def _train(args) -> int:
    from .train import bench_train

    return bench_train(args) or 0


def _eval(args) -> int:
    from .evaluate import bench_eval

    return bench_eval(args) or 0
