"""TinyTrace-Generator: rule-driven snippet synthesis (paper Sec. 2.2, App. B, Fig. 8-10).

Two coupled processes build a snippet. *Skeleton construction* (the SCA, Algorithm 2) queues
abstract keywords in the current context; *code instantiation* (the CIA, Algorithm 3) dequeues
them and turns each into code, pushing a new context for context-creating keywords. A *context
stack* coordinates them: each :class:`Level` holds a general-information dict (``gid``) and a
context keyword queue (``ckq``). The *main algorithm* (Algorithm 1) alternates the two until the
``END`` keyword.

The user-defined parts are pluggable: pass any object with ``high_level(g) -> list[str]``
(keywords to queue; the SCA's starred area) and ``low_level(g, keyword)`` (emit code, push a
context; the CIA's starred area), optionally ``accept(g) -> bool`` (snippet-level rejection).
:class:`DefaultRules` implements the paper's distribution, configured by
:class:`tinytrace.config.GeneratorConfig`; a new distribution never needs library edits.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .config import GeneratorConfig
from .program import ASSIGN, ELIF, ELSE, IF, WHILE, Line
from .tracer import _ARITH, _CMP, PAIR_TEXT

# Skeleton keywords (App. B, Table 1). UNINDENT closes the current context; END stops.
START, END, UNINDENT = "[START]", "[END]", "[UNINDENT]"
ASSIGNMENT, IF_STATEMENT, ELIF_STATEMENT, ELSE_STATEMENT, WHILE_LOOP = (
    "[ASSIGNMENT]",
    "[IF_STATEMENT]",
    "[ELIF_STATEMENT]",
    "[ELSE_STATEMENT]",
    "[WHILE_LOOP]",
)


@dataclass(slots=True)
class Level:
    """One context-stack level: general-information dict + context keyword queue (Fig. 8)."""

    gid: dict
    ckq: deque = field(default_factory=deque)


class Generation:
    """State of one snippet under construction, handed to the rules."""

    __slots__ = ("rng", "config", "lines", "stack", "keyword", "variables", "info", "deepest")

    def __init__(self, rng: random.Random, config: GeneratorConfig):
        self.rng = rng
        self.config = config
        self.lines: list[Line] = []
        self.stack: list[Level] = [Level({"type": "root", "n_lines": 0, "last": None})]
        self.keyword = START
        self.variables: list[str] = []  # distinct variables assigned so far, in textual order
        self.info: dict = {"ifs": []}  # snippet-level facts the rules keep (`if` depths, ...)
        self.deepest = 0  # deepest indentation of any line so far

    @property
    def top(self) -> Level:
        return self.stack[-1]

    @property
    def depth(self) -> int:
        """Indentation level of the current context (0 at the top level)."""
        return len(self.stack) - 1

    def emit(self, line: Line) -> None:
        """Append a line at the current depth (the CIA's ``code_snippet += fragment``)."""
        stack = self.stack
        line.indent = d = len(stack) - 1
        if d > self.deepest:
            self.deepest = d
        self.lines.append(line)
        gid = stack[-1].gid
        gid["n_lines"] += 1
        kind = gid["last"] = line.kind
        if kind == ASSIGN:
            t = line.target
            if t not in self.variables:
                self.variables.append(t)

    def push(self, **gid) -> Level:
        """Open a new execution context (for context-creating keywords)."""
        gid.setdefault("n_lines", 0)
        gid.setdefault("last", None)
        level = Level(gid)
        self.stack.append(level)
        return level

    def pop(self) -> Level:
        if len(self.stack) == 1:
            raise RuntimeError("cannot close the outermost context")
        return self.stack.pop()


class Generator:
    """The main algorithm (Algorithm 1) with pluggable rules."""

    def __init__(self, config: GeneratorConfig | None = None, rules=None):
        self.config = config or GeneratorConfig()
        self.rules = rules if rules is not None else DefaultRules(self.config)
        # the default rules have a specialised twin (same draws, same snippets, ~4x faster);
        # explicitly passed rules, DefaultRules included, always run through the context stack
        self.fast = default_fast_path(self.config) if rules is None else None

    def construct_skeleton(self, g: Generation) -> None:
        """Algorithm 2: the user rules choose keywords; they are queued in the current context."""
        g.stack[-1].ckq.extend(self.rules.high_level(g))

    def instantiate_code(self, g: Generation) -> None:
        """Algorithm 3: dequeue the current context's keywords and instantiate each."""
        low_level = self.rules.low_level
        stack = g.stack
        ckq = stack[-1].ckq
        while ckq:
            g.keyword = kw = ckq.popleft()
            if kw is END or kw == END:
                return
            if kw is UNINDENT or kw == UNINDENT:
                g.pop()
            else:
                n = len(stack)
                low_level(g, kw)
                if len(stack) > n:
                    return  # a new context: the skeleton construction fills it next
            ckq = stack[-1].ckq

    def generate_one(self, rng: random.Random, max_iterations: int = 10_000) -> Generation:
        """One run of the main algorithm (Algorithm 1), without snippet-level rejection."""
        g = Generation(rng, self.config)
        construct, instantiate = self.construct_skeleton, self.instantiate_code
        for _ in range(max_iterations):
            construct(g)
            instantiate(g)
            if g.keyword is END or g.keyword == END:
                return g
        raise RuntimeError(f"the rules did not reach {END} in {max_iterations} iterations")

    def generate(self, rng: random.Random, max_tries: int = 100_000, stats=None) -> list[Line]:
        """A snippet accepted by the rules' ``accept`` filter (if any). Rejections are counted
        in ``stats["generator"]`` when a dict or Counter is given."""
        if self.fast is not None:
            return [Line(*t) for t in self.fast(rng, max_tries, stats)]
        accept = getattr(self.rules, "accept", None)
        for tries in range(max_tries):
            g = self.generate_one(rng)
            if accept is None or accept(g):
                if stats is not None and tries:
                    stats["generator"] = stats.get("generator", 0) + tries
                return g.lines
        raise RuntimeError(f"no snippet accepted in {max_tries} tries: check the config")


class DefaultRules:
    """The paper's distribution (Sec. 3.2) with the authors' public defaults, generalised by
    :class:`GeneratorConfig`.

    High level: uniform choice among the moves allowed at that point: an assignment; an ``if``
    (``while``, ``elif``/``else`` when enabled) below the depth limit; closing a non-empty block;
    ending once the minimum statement count is reached (an empty block first gets an
    assignment); at most ``max_ifs_per_depth`` ``if`` headers at one depth. Snippets over the
    statement limit (an empty block closed at the limit) or not reaching ``min_depth`` are
    rejected and redrawn.

    Low level: an assignment reuses an existing variable as target with ``p_reuse_target``,
    else takes a uniformly random letter; its right side is a literal, a variable or
    ``x op y`` (``p_rhs_literal``/``p_rhs_variable``/rest), each operand a variable or literal
    with ``p_operand_variable`` (literals only while no variable exists); one arithmetic operator
    per snippet; conditions compare two such operands; literals have a uniform magnitude in
    ``[0, max_literal]`` and a random sign. Forbidden variable pairs (Sec. 4.2) are avoided by
    drawing a variable operand only among those allowed with the variables already in the
    statement (a literal if none is).
    """

    def __init__(self, config: GeneratorConfig):
        self.c = config
        # a test set that must use a forbidden pair draws freely; the pipeline filters it
        self._pairs = frozenset() if config.require_forbidden_pair else config.forbidden_pair_set()
        self._global = config.exclusion_scope == "global"
        w = config.move_weights
        self._extras = tuple(
            kw for kw, name in ((WHILE_LOOP, "while"), (ELIF_STATEMENT, "elif"), (ELSE_STATEMENT, "else"))
            if w.get(name, 0)
        )
        self._weights = dict(w) if w else None
        self._lit_n = config.max_literal + 1
        self._p_var = config.p_operand_variable
        self._p_lit_or_var = config.p_rhs_literal + config.p_rhs_variable

    # -- high-level rules (skeleton) ------------------------------------------------------
    def high_level(self, g: Generation) -> list[str]:
        c = self.c
        n = len(g.lines)
        stack = g.stack
        depth = len(stack) - 1
        gid = stack[-1].gid
        empty = depth > 0 and gid["n_lines"] == 0
        if n >= c.max_statements:
            return [ASSIGNMENT, END] if empty else [END]
        if g.deepest < c.min_depth and c.max_statements - n < c.min_depth - depth + 1:
            # min_depth is out of reach: stop now, `accept` rejects it (same distribution as
            # generating to the end and rejecting, much faster for the deep presets)
            return [END]
        moves = [ASSIGNMENT]
        if depth < c.max_depth:
            limit = c.max_ifs_per_depth
            if limit is None or g.info["ifs"].count(depth) < limit:
                moves.append(IF_STATEMENT)
        extras = self._extras
        if extras:
            if WHILE_LOOP in extras and depth < c.max_depth:
                moves.append(WHILE_LOOP)
            if not empty and gid["last"] in (IF, ELIF) and gid.get("closed_if"):
                moves += [kw for kw in extras if kw is not WHILE_LOOP]
        if depth > 0 and not empty:
            moves.append(UNINDENT)
        if n >= c.min_statements:
            moves.append(END)
        if self._weights is None:
            kw = moves[int(g.rng.random() * len(moves))]
        else:
            w = [self._weights.get(_MOVE_NAMES[m], 1.0) for m in moves]
            kw = g.rng.choices(moves, w)[0]
        if kw is END and empty:
            return [ASSIGNMENT, END]
        if extras:
            if kw is UNINDENT:
                # the parent now ends with a closed block: elif/else may follow an if/elif block
                stack[-2].gid["closed_if"] = gid["type"] in (IF, ELIF)
            else:
                gid["closed_if"] = False
        return [kw]

    # -- low-level rules (instantiation) ----------------------------------------------------
    def low_level(self, g: Generation, keyword: str) -> None:
        c = self.c
        if keyword == ASSIGNMENT:
            g.emit(self.assignment(g))
        elif keyword == IF_STATEMENT:
            g.emit(Line(IF, 0, None, *self.condition(g)))
            g.info["ifs"].append(len(g.stack) - 1)
            g.push(type=IF)
        elif keyword == ELIF_STATEMENT:
            g.emit(Line(ELIF, 0, None, *self.condition(g)))
            g.push(type=ELIF)
        elif keyword == ELSE_STATEMENT:
            g.emit(Line(ELSE, 0))
            g.push(type=ELSE)
        elif keyword == WHILE_LOOP:
            # Table 1: `c = k`, `while c < k + m:`, first body line `c = c + 1`.
            rng = g.rng
            var = c.variables[int(rng.random() * len(c.variables))]
            start = int(rng.random() * (2 * c.max_literal + 1)) - c.max_literal
            stop = start + 1 + int(rng.random() * c.while_span)
            g.emit(Line(ASSIGN, 0, var, start))
            g.emit(Line(WHILE, 0, None, var, "<", stop))
            g.push(type=WHILE)
            g.emit(Line(ASSIGN, 0, var, var, "+", 1))
        else:
            raise ValueError(f"DefaultRules has no low-level rule for keyword {keyword!r}")

    def accept(self, g: Generation) -> bool:
        c = self.c
        lines = g.lines
        if len(lines) > c.max_statements:
            return False
        return g.deepest >= c.min_depth

    # -- helpers ----------------------------------------------------------------------------
    def literal(self, rng: random.Random) -> int:
        m = int(rng.random() * self._lit_n)
        return -m if rng.random() < 0.5 else m

    def operand(self, g: Generation, used: tuple) -> str | int:
        rng = g.rng
        vs = g.variables
        if vs and rng.random() < self._p_var:
            if used and self._pairs:
                vs = [v for v in vs if all(_pair(u, v) not in self._pairs for u in used)]
                if not vs:
                    return self.literal(rng)
            return vs[int(rng.random() * len(vs))]
        m = int(rng.random() * self._lit_n)
        return -m if rng.random() < 0.5 else m

    def assignment(self, g: Generation) -> Line:
        c, rng = self.c, g.rng
        vs = g.variables
        if vs and rng.random() < c.p_reuse_target:
            target = vs[int(rng.random() * len(vs))]
        else:
            names = c.variables
            target = names[int(rng.random() * len(names))]
        info = g.info
        op = info.get("op")
        if op is None or not c.one_op_per_snippet:
            ops = c.arith_ops
            op = info["op"] = ops[int(rng.random() * len(ops))]
        used = (target,) if self._global else ()  # global scope: no pair in any construct
        u = rng.random()
        if u < c.p_rhs_literal:
            return Line(ASSIGN, 0, target, self.literal(rng))
        if u < self._p_lit_or_var:
            return Line(ASSIGN, 0, target, self.operand_var(g, used))
        a = self.operand(g, used)
        b = self.operand(g, used + (a,) if a.__class__ is str else used)
        return Line(ASSIGN, 0, target, a, op, b)

    def operand_var(self, g: Generation, used: tuple) -> str | int:
        """A variable (a literal while none exists or none is allowed)."""
        vs = g.variables
        if self._pairs and used:
            vs = [v for v in vs if all(_pair(u, v) not in self._pairs for u in used)]
        if not vs:
            return self.literal(g.rng)
        return vs[int(g.rng.random() * len(vs))]

    def condition(self, g: Generation) -> tuple:
        c = self.c
        a = self.operand(g, ())
        b = self.operand(g, (a,) if self._global and isinstance(a, str) else ())
        return a, c.comparisons[int(g.rng.random() * len(c.comparisons))], b


_MOVE_NAMES = {
    ASSIGNMENT: "assign",
    IF_STATEMENT: "if",
    WHILE_LOOP: "while",
    ELIF_STATEMENT: "elif",
    ELSE_STATEMENT: "else",
    UNINDENT: "close",
    END: "end",
}


def _pair(u: str, v: str) -> str:
    return u + v if u <= v else v + u


# --- the default rules, specialised --------------------------------------------------------------
def default_fast_path(c: GeneratorConfig, run: bool = False):
    """:class:`DefaultRules` for one config as a plain function ``(rng, max_tries, stats) ->
    lines`` with lines as ``(kind, indent, target, a, op, b)`` tuples (the fields of
    :class:`Line`). It makes the same draws in the same order as the context-stack generator,
    so snippets and the random stream are identical (tested); the context stack shrinks to
    the current depth and whether its block is still empty, and the moves allowed at a point
    come from a precomputed table. None for configs with move weights (``while``, ``elif``,
    ``else``, non-uniform moves): those use the pluggable path.

    ``run=True``: the snippet is also executed while it is written (the corpus builder's
    path), and the function returns ``(lines, steps, final, reason, pairs, executed_pairs,
    max_depth)``: the steps and final state of :func:`tinytrace.tracer.run` with each state as
    its text (:func:`tinytrace.tracer.state_text`), the reason ``run`` would reject the
    snippet or None (tested against it), and the operand pairs of all and of the executed
    assignments (:func:`tinytrace.data.operand_pairs`). Without loops, ``elif`` or ``else``
    a line runs iff every ``if`` above it passed, so the execution follows the writing; a
    rejected snippet is still written to the end, so the random stream does not depend on
    ``run``."""
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
    allowed = {u: frozenset(v for v in names if _pair(u, v) not in pairs) for u in names}
    # MOVES[can_if][can_close][can_end]: DefaultRules.high_level's move list at that point
    MOVES = [[[(ASSIGN,) + (IF,) * ci + (UNINDENT,) * cc + (END,) * ce for ce in (0, 1)]
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
                            p = a + b if a <= b else b + a
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
                                x = _ARITH[o](x, y)
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
                            live = x < y if o == "<" else x > y if o == ">" else _CMP[o](x, y)
                    n += 1
                    ifs[depth] += 1
                    depth += 1
                    empty = True
                    # the block gets a line before it closes or the snippet ends
                    if depth > deepest:
                        deepest = depth
                    m_if = MOVES[depth < max_d and ifs[depth] < if_limit]
                    m_here = m_if[False]
                elif kw is UNINDENT:
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
                    return lines, steps, state, reason, pairs_all, pairs_ran, deepest
                return lines
        raise RuntimeError(f"no snippet accepted in {max_tries} tries: check the config")

    return generate
