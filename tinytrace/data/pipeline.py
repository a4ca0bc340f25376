"""One corpus record: generate -> trace -> filter -> tokenize (paper Sec. 2.2, 3.2, C.5).

:class:`Pipeline` draws snippets, traces them, applies the runtime filters (value range, loop
cap, exceptions) and the pair filter of the excluded-pair test sets, and makes each accepted
snippet's example text, token ids and columns (:data:`CHUNK_SCHEMA`). Deduplication, splits and
files are the builder's (:mod:`tinytrace.data.build`).
"""
from __future__ import annotations

import gc
import hashlib
import math
import random
from collections import Counter

import pyarrow as pa

from tinytrace.lang.config import GeneratorConfig
from tinytrace.lang.fast import Traced, default_fast_path
from tinytrace.lang.generator import Generator
from tinytrace.lang.program import max_depth, operand_pairs
from tinytrace.lang.tracer import (
    Rejected,
    max_step_pair_tokens,
    pack_example,
    run,
    state_text,
    unpack_examples,
)

# attempts in a row, none accepted, before a chunk gives up (a config that accepts nothing)
GIVE_UP = 100_000

# the columns of a written split
ROW_SCHEMA = pa.schema(
    [
        ("code", pa.string()),
        ("trace", pa.string()),
        ("n_statements", pa.int16()),
        ("max_depth", pa.int8()),
        ("n_steps", pa.int32()),
        ("n_tokens", pa.int32()),
        ("max_step_pair_tokens", pa.int32()),
        ("operand_pairs", pa.list_(pa.string())),
        ("executed_operand_pairs", pa.list_(pa.string())),
        ("sha256", pa.string()),
    ]
)
# what :meth:`Pipeline.records` returns: the row columns, the example's token ids and whether
# it passes the determinism filter
CHUNK_SCHEMA = ROW_SCHEMA.append(pa.field("tokens", pa.binary())).append(
    pa.field("deterministic", pa.bool_()))


class Pipeline:
    """Generate snippets, trace them, apply the runtime and pair filters, format them."""

    def __init__(self, config: GeneratorConfig, context: int = 512, rules=None):
        self.config = config
        self.context = context
        # rules=None: the default rules' fast path, which executes each snippet as it writes
        # it; DefaultRules(config) gives the same records through the context-stack generator
        # and the general tracer (slower)
        self.generator = Generator(config, rules)
        self.fast = default_fast_path(config, run=True) if rules is None else None
        # the multi-character lexemes a fast-path snippet may hold (for the packed text)
        self.lexemes = [w for w in ["if", *config.arith_ops, *config.comparisons] if len(w) > 1]
        self.forbidden = config.forbidden_pair_set() if config.require_forbidden_pair else None

    def sample(self, rng: random.Random, stats: Counter) -> dict | None:
        """One attempt: a record, or None (the reason counted in ``stats``)."""
        cols = self._columns(self._packed(rng, stats, 1, 1))
        return {k: v[0] for k, v in cols.items()} if cols["code"] else None

    def records(self, rng: random.Random, n: int, stats: Counter) -> dict[str, list]:
        """``n`` accepted records as columns (the corpus builder's chunks): the attempts of
        :meth:`sample`, whose texts and tokens are then made in one pass for all."""
        # no record holds a reference cycle: the collector's passes over the chunk's young
        # objects would be pure cost
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._columns(self._packed(rng, stats, n, math.inf, give_up=GIVE_UP))
        finally:
            if collecting:
                gc.enable()

    def _packed(self, rng, stats: Counter, n: int, max_attempts, give_up: int = 0) -> list[tuple]:
        """Attempts until ``n`` are accepted or ``max_attempts`` were made (the rejection
        reasons counted in ``stats``); the accepted ones as ``(n_statements, max_depth,
        n_steps, pairs, executed_pairs, packed, part_lengths)``. ``give_up``: a ValueError when
        that many attempts in a row are all rejected (a config that accepts nothing)."""
        traced = self.fast or self._traced
        forbidden = self.forbidden
        out = []
        k = last = 0
        while len(out) < n and k < max_attempts:
            k += 1
            if give_up and k - last >= give_up:
                top = Counter({r: v for r, v in stats.items() if r != "attempts"}).most_common(3)
                raise ValueError(f"the generator config accepted none of {give_up:,} attempts in a "
                                 f"row (rejected: {', '.join(f'{r} {v:,}' for r, v in top)})")
            rows, steps, final, reason, pairs, executed, depth = traced(rng, 100_000, stats)
            if reason is not None:
                stats[reason] += 1
            elif forbidden is not None and not any(p in forbidden for p in executed):
                stats["no_forbidden_pair"] += 1
            else:
                out.append((len(rows), depth, len(steps), pairs, executed)
                           + pack_example(rows, steps, final))
                last = k
        stats["attempts"] += k
        return out

    def _traced(self, rng, max_tries, stats):
        """The fast path's :class:`~tinytrace.lang.fast.Traced` through the rules' generator
        and the general tracer (any rules, loops included)."""
        c = self.config
        lines = self.generator.generate(rng, max_tries, stats)
        rows = [ln.row() for ln in lines]
        try:
            ex = run(lines, c.value_range, c.max_loop_iterations)
        except Rejected as r:
            return Traced(rows, None, None, r.reason, None, None, None)
        ran = {i for i, _ in ex.steps}
        steps = [(i, state_text(state)) for i, state in ex.steps]
        return Traced(rows, steps, state_text(ex.final), None, operand_pairs(lines),
                      operand_pairs(lines, ran), max_depth(lines))

    def _columns(self, packed: list[tuple]) -> dict[str, list]:
        n_statements, depth, n_steps, pairs, executed, examples, parts = (
            zip(*packed) if packed else [()] * 7)
        n_tokens = [sum(p) for p in parts]
        codes, texts, tokens = unpack_examples(
            examples, n_tokens, self.lexemes if self.fast is not None else None)
        pair_tokens = list(map(max_step_pair_tokens, parts))  # determinism filter, C.5
        sha256, context = hashlib.sha256, self.context
        return {
            "code": codes,
            "trace": texts,
            "n_statements": list(n_statements),
            "max_depth": list(depth),
            "n_steps": list(n_steps),
            "n_tokens": n_tokens,
            "max_step_pair_tokens": pair_tokens,
            "operand_pairs": list(pairs),
            "executed_operand_pairs": list(executed),
            "sha256": [sha256(c.encode()).hexdigest() for c in codes],
            "tokens": tokens,
            "deterministic": [t <= context for t in pair_tokens],
        }
