"""The default rules' fast path: :class:`~tinytrace.lang.generator.DefaultRules` for one config
as one plain function, optionally executing each snippet while it writes it.

It makes the same draws in the same order as the context-stack generator, so snippets and the
random stream are identical (the tests compare them); the context stack shrinks to the current
depth and whether its block is still empty, and the moves allowed at a point come from a
precomputed table. The corpus builder runs it with ``run=True``: without loops, ``elif`` or
``else`` a line runs iff every ``if`` above it passed, so the execution follows the writing.
"""
from __future__ import annotations

from typing import NamedTuple

from .config import GeneratorConfig
from .program import ASSIGN, IF, pair
from .tracer import ARITH, CMP, PAIR_TEXT

# the skeleton moves besides ASSIGN and IF, named as in ``GeneratorConfig.move_weights``
CLOSE, END = "close", "end"


class Traced(NamedTuple):
    """A snippet written and run by the fast path (``run=True``)."""

    lines: list[tuple]  # ``(kind, indent, target, a, op, b)``, the fields of ``Line``
    steps: list[tuple[int, str]]  # (line index, state text before it) per executed line
    final: str  # the final state text
    reason: str | None  # why ``tracer.run`` rejects the snippet, or None
    pairs: list[str]  # ``program.operand_pairs`` of the snippet
    executed_pairs: list[str]  # ... of its executed lines
    max_depth: int


def default_fast_path(c: GeneratorConfig, run: bool = False):
    """:class:`~tinytrace.lang.generator.DefaultRules` for ``c`` as a function
    ``generate(rng, max_tries=100_000, stats=None)`` returning the lines as ``(kind, indent,
    target, a, op, b)`` tuples, or with ``run=True`` a :class:`Traced`: the steps and final
    state of :func:`tinytrace.lang.tracer.run` with each state as its text
    (:func:`tinytrace.lang.tracer.state_text`), the reason ``run`` would reject the snippet (or
    None) and the operand pairs of all and of the executed assignments. A rejected snippet is
    still written to the end, so the random stream does not depend on ``run``. None for
    configs with move weights (``while``, ``elif``, ``else``, non-uniform moves): those use
    the context-stack generator."""
    if c.move_weights:
        return None
    lo, hi = c.value_range
    pair_text = PAIR_TEXT.__getitem__
    names, ops, cmps = c.variables, c.arith_ops, c.comparisons
    n_names, n_ops, n_cmps = len(names), len(ops), len(cmps)
    one_op = c.one_op_per_snippet
    lit_n = c.max_literal + 1
    p_reuse, p_lit, p_var = c.p_reuse_target, c.p_rhs_literal, c.p_operand_variable
    p_lit_or_var = c.p_rhs_literal + c.p_rhs_variable
    min_s, max_s, min_d, max_d = c.min_statements, c.max_statements, c.min_depth, c.max_depth
    need_depth = min_d > 0
    if_limit = c.max_ifs_per_depth if c.max_ifs_per_depth is not None else max_s + 1
    pairs = frozenset() if c.require_forbidden_pair else c.forbidden_pair_set()
    glob = c.exclusion_scope == "global"
    # the partners each letter may meet in one statement (DefaultRules filters by pair)
    allowed = {u: frozenset(v for v in names if pair(u, v) not in pairs) for u in names}
    # MOVES[can_if][can_close][can_end]: DefaultRules.high_level's move list at that point
    MOVES = [[[(ASSIGN,) + (IF,) * ci + (CLOSE,) * cc + (END,) * ce for ce in (0, 1)]
              for cc in (0, 1)] for ci in (0, 1)]

    def generate(rng, max_tries=100_000, stats=None):
        random = rng.random

        def operand(vs, used):
            # DefaultRules.operand: a variable (among those allowed with `used`) or a literal
            if vs and random() < p_var:
                if used and pairs:
                    vs = [v for v in vs if all(v in allowed[u] for u in used)]
                if vs:
                    return vs[int(random() * len(vs))]
            m = int(random() * lit_n)
            return -m if random() < 0.5 else m

        for tries in range(max_tries):
            lines = []
            vs = []  # distinct assigned variables, in textual order
            ifs = [0] * (max_d + 1)  # `if` headers per depth
            op = None
            depth = deepest = 0
            empty = False  # the current block has no line yet
            # the moves allowed here, as MOVES[can_if][can_close]: they change only when an
            # `if` opens or closes a block and when a block gets its first line
            m_if = MOVES[max_d > 0 and if_limit > 0]
            m_here = m_if[False]
            # the execution (run=True): variables, steps, state text, whether the current
            # block runs (and the enclosing blocks' flags), the rejection reason, pairs
            env, steps, state, live, lives, reason = {}, [], "", run, [], None
            pairs_all, pairs_ran = [], []
            n = 0  # lines so far
            while True:
                if n >= max_s:
                    kw = END
                elif need_depth and deepest < min_d and max_s - n < min_d - depth + 1:
                    break
                else:
                    moves = m_here[n >= min_s]
                    kw = moves[int(random() * len(moves))]
                if kw is ASSIGN or (kw is END and empty):
                    # DefaultRules.assignment (an empty block gets one before the end)
                    if vs and random() < p_reuse:
                        target = vs[int(random() * len(vs))]
                    else:
                        target = names[int(random() * n_names)]
                    if op is None or not one_op:
                        op = ops[int(random() * n_ops)]
                    r = random()
                    if r < p_lit:
                        m = int(random() * lit_n)
                        a, o, b = -m if random() < 0.5 else m, None, None
                    elif r < p_lit_or_var:
                        cand = vs
                        if pairs and glob:
                            cand = [v for v in vs if v in allowed[target]]
                        if cand:
                            a = cand[int(random() * len(cand))]
                        else:
                            m = int(random() * lit_n)
                            a = -m if random() < 0.5 else m
                        o = b = None
                    else:
                        if pairs:
                            # DefaultRules.assignment: the second operand avoids pairs with the first
                            used = (target,) if glob else ()
                            a = operand(vs, used)
                            b = operand(vs, used + (a,) if a.__class__ is str else used)
                        else:  # no pairs to avoid: operand() inlined
                            if vs and random() < p_var:
                                a = vs[int(random() * len(vs))]
                            else:
                                m = int(random() * lit_n)
                                a = -m if random() < 0.5 else m
                            if vs and random() < p_var:
                                b = vs[int(random() * len(vs))]
                            else:
                                m = int(random() * lit_n)
                                b = -m if random() < 0.5 else m
                        o = op
                        if run and a.__class__ is str and b.__class__ is str:
                            p = pair(a, b)
                            pairs_all.append(p)
                            if live:
                                pairs_ran.append(p)
                    lines.append((ASSIGN, depth, target, a, o, b))
                    if live:  # run the assignment as tracer.run does
                        steps.append((n, state))
                        x = a if a.__class__ is int else env.get(a)
                        if o is not None and x is not None:
                            y = b if b.__class__ is int else env.get(b)
                            if y is None:
                                x = None
                            elif o == "+":
                                x += y
                            elif o == "-":
                                x -= y
                            elif y or o not in ("//", "%"):
                                x = ARITH[o](x, y)
                            else:
                                x = None  # ZeroDivisionError
                        if x is None:
                            reason, live = "exception", False
                        elif x < lo or x > hi:
                            reason, live = "value_range", False
                        elif target in env:
                            env[target] = x
                            state = ";".join(map(pair_text, env.items()))
                        else:  # a new variable comes last
                            env[target] = x
                            t = pair_text((target, x))
                            state = f"{state};{t}" if state else t
                    if target not in vs:
                        vs.append(target)
                    n += 1
                    if kw is END:
                        break
                    if empty:  # the block's first line: it may close now
                        empty = False
                        m_here = m_if[True]
                elif kw is IF:
                    # DefaultRules.condition; then the context push
                    if pairs and glob:
                        a = operand(vs, ())
                        b = operand(vs, (a,) if a.__class__ is str else ())
                    else:
                        if vs and random() < p_var:
                            a = vs[int(random() * len(vs))]
                        else:
                            m = int(random() * lit_n)
                            a = -m if random() < 0.5 else m
                        if vs and random() < p_var:
                            b = vs[int(random() * len(vs))]
                        else:
                            m = int(random() * lit_n)
                            b = -m if random() < 0.5 else m
                    o = cmps[int(random() * n_cmps)]
                    lines.append((IF, depth, None, a, o, b))
                    lives.append(live)
                    if live:  # run the test: the block runs iff it passes
                        steps.append((n, state))
                        x = a if a.__class__ is int else env.get(a)
                        y = b if b.__class__ is int else env.get(b)
                        if x is None or y is None:
                            reason, live = "exception", False
                        else:
                            live = x < y if o == "<" else x > y if o == ">" else CMP[o](x, y)
                    n += 1
                    ifs[depth] += 1
                    depth += 1
                    empty = True
                    # the block gets a line before it closes or the snippet ends
                    if depth > deepest:
                        deepest = depth
                    m_if = MOVES[depth < max_d and ifs[depth] < if_limit]
                    m_here = m_if[False]
                elif kw is CLOSE:
                    depth -= 1
                    empty = False
                    m_if = MOVES[depth < max_d and ifs[depth] < if_limit]
                    m_here = m_if[depth > 0]
                    live = lives.pop() and reason is None
                else:
                    break
            if len(lines) <= max_s and deepest >= min_d:
                if stats is not None and tries:
                    stats["generator"] = stats.get("generator", 0) + tries
                if run:
                    return Traced(lines, steps, state, reason, pairs_all, pairs_ran, deepest)
                return lines
        raise RuntimeError(f"no snippet accepted in {max_tries} tries: check the config")

    return generate
