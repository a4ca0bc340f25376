"""The data pipeline's benchmark (``tinytrace bench generate``); the other benchmarks live
beside what they measure: :func:`tinytrace.train.bench.bench_train`,
:func:`tinytrace.evaluate.bench.bench_eval`, :func:`tinytrace.experiments.learn.bench_learn`.
Each takes keywords and returns a dict.

:func:`bench_generate` measures single-core throughput of the data pipeline in accepted snippets per
second: ``generate_only`` (generator), ``settrace`` (generator + reference tracer),
``fast`` (generator + fast tracer, as the pipeline runs them) and ``pipeline`` (generator +
fast tracer + filters + text and tokens + hash, one build chunk at a time), each on the same
seed in the same run, in interleaved rounds whose best counts (a shared machine is noisy); and
``pipeline_pluggable``, the same records made through the context-stack generator running
``DefaultRules`` and the general tracer (the reference the default rules' fast path is
tested against), so that ``pipeline_over_pluggable`` is a ratio within one run.
"""
from __future__ import annotations

import platform
import random
import time
from collections import Counter

from tinytrace.data import BuildConfig, Pipeline
from tinytrace.lang.config import get_preset
from tinytrace.lang.fast import default_fast_path
from tinytrace.lang.generator import DefaultRules, Generator
from tinytrace.lang.program import render
from tinytrace.lang.tracer import Rejected, run, run_settrace


def bench_generate(preset: str = "base", seconds: float = 3.0, seed: int = 0,
                   rounds: int = 5) -> dict:
    if not seconds > 0 or rounds < 1:
        raise ValueError(f"need seconds > 0 and rounds >= 1, got {seconds}, {rounds}")
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
