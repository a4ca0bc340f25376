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
:class:`tinytrace.lang.config.GeneratorConfig`; a new distribution never needs library edits.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .config import GeneratorConfig
from .fast import default_fast_path
from .program import ASSIGN, ELIF, ELSE, IF, WHILE, Line, pair

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
        # the default rules have a specialised twin (same draws, same snippets, faster: lang.fast);
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
                rest = g.pop().ckq  # what the rules queued after closing: the parent's next
                stack[-1].ckq.extendleft(reversed(rest))
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
            names = c.variables
            if self._global and self._pairs:  # global scope: `c = c + 1` pairs c with itself
                allowed = [v for v in names if pair(v, v) not in self._pairs]
                g.info["no_while_variable"] = not allowed  # rejected in accept
                names = allowed or names
            var = names[int(rng.random() * len(names))]
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
        if len(lines) > c.max_statements or g.info.get("no_while_variable"):
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
                vs = [v for v in vs if all(pair(u, v) not in self._pairs for u in used)]
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
            vs = [v for v in vs if all(pair(u, v) not in self._pairs for u in used)]
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
