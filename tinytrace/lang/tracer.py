"""Execution traces in the TinyTracing format (paper Sec. 2.1, Fig. 1, App. A).

One example is the snippet, then one block per executed line, then a final block::

    <snippet>
    #STEP
    <snippet with the line about to run as `@<tabs><line>$<state>`>
    ...
    #STEP
    <snippet>
    @^$<final state>

``<state>`` lists the variables bound *before* the line runs as ``name?value`` joined by ``;``
in the order they were first assigned at run time. Examples are separated by a blank line.

Two engines produce the executed-line sequence: :func:`run` interprets the restricted language
directly (canonical, fast, independent of the Python version) and :func:`run_settrace` executes
the snippet under :func:`sys.settrace`, as the paper does (Sec. 2.2), for differential testing.
Both apply the runtime filters of Sec. 2.2/3.2 and raise :class:`Rejected` with a reason.
"""
from __future__ import annotations

import operator
import sys
from dataclasses import dataclass
from itertools import accumulate

from . import tokenizer as tk
from .program import ASSIGN, ELIF, ELSE, IF, WHILE, Line, parse

State = tuple  # tuple of (name, value) pairs in first-assignment order


class Rejected(Exception):
    """A runtime filter rejected the snippet; ``reason`` is one of REASONS (what the corpus
    statistics count), ``cause`` says more where the filter knows it (the exception, e.g.
    ``NameError: name 'b' is not defined``), else it is empty."""

    def __init__(self, reason: str, cause: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


REASONS = ("value_range", "loop_cap", "exception")

# the language's operators as functions (the tracers and the generator's fast path run them)
ARITH = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}
CMP = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class Execution:
    """What ran: ``steps`` = (line index, state before it) per executed line, ``final`` state,
    and the indices of the executed assignment lines."""

    steps: list[tuple[int, State]]
    final: State


# --- the fast tracer ------------------------------------------------------------------------
def block_ends(lines: list[Line]) -> list[int]:
    """For each line, the index of the first later line at the same or a lower indentation
    (the end of its block, for headers)."""
    n = len(lines)
    ends = [n] * n
    open_: list[int] = []
    for i, ln in enumerate(lines):
        ind = ln.indent
        while open_ and lines[open_[-1]].indent >= ind:
            ends[open_.pop()] = i
        open_.append(i)
    return ends


def run(lines: list[Line], value_range=(-99, 99), max_loop_iterations: int = 100) -> Execution:
    """Interpret a snippet; return the executed lines with the state before each.

    Events follow CPython's line events: one per executed line, one per loop test, none for an
    ``else:`` line. Runtime filters (Sec. 2.2): a value outside ``value_range`` after any
    assignment, more than ``max_loop_iterations`` body entries of one ``while`` line, or any
    exception (a variable read before assignment, division by zero) raise :class:`Rejected`."""
    lo, hi = value_range
    n = len(lines)
    ends = block_ends(lines)
    env: dict[str, int] = {}
    steps: list[tuple[int, State]] = []
    append = steps.append
    state: State = ()
    loops: list[int] = []  # active while headers, innermost last
    counts: dict[int, int] = {}
    i = 0
    try:
        while True:
            while loops and i >= ends[loops[-1]]:
                i = loops.pop()  # end of a loop body: back to its test
            if i >= n:
                break
            ln = lines[i]
            kind = ln.kind
            if kind == ASSIGN:
                append((i, state))
                a = ln.a
                x = a if a.__class__ is int else env[a]
                op = ln.op
                if op is not None:
                    b = ln.b
                    y = b if b.__class__ is int else env[b]
                    if op == "+":
                        x = x + y
                    elif op == "-":
                        x = x - y
                    else:
                        x = ARITH[op](x, y)
                if x < lo or x > hi:
                    raise Rejected("value_range")
                env[ln.target] = x
                state = tuple(env.items())
                i += 1
            elif kind == IF or kind == WHILE:
                append((i, state))
                if _test(ln, env):
                    if kind == WHILE:
                        c = counts.get(i, 0) + 1
                        if c > max_loop_iterations:
                            raise Rejected("loop_cap")
                        counts[i] = c
                        loops.append(i)
                    i += 1
                    continue
                # condition false: try the chain's elif tests, then its else body
                ind = ln.indent
                i = ends[i]
                while kind == IF and i < n and lines[i].indent == ind:
                    nxt = lines[i]
                    if nxt.kind == ELIF:
                        append((i, state))
                        if _test(nxt, env):
                            i += 1
                            break
                        i = ends[i]
                    elif nxt.kind == ELSE:
                        i += 1  # CPython emits no line event for `else:`
                        break
                    else:
                        break
            else:  # reached an elif/else after a taken branch: skip the rest of the chain
                ind = ln.indent
                while i < n and lines[i].indent == ind and lines[i].kind in (ELIF, ELSE):
                    i = ends[i]
    except KeyError as e:  # a variable read before it is assigned: Python's NameError
        raise Rejected("exception", f"NameError: name {e.args[0]!r} is not defined") from None
    except ZeroDivisionError as e:
        raise Rejected("exception", f"ZeroDivisionError: {e}") from None
    return Execution(steps, state)


def _test(ln: Line, env: dict) -> bool:
    a, b = ln.a, ln.b
    x = a if a.__class__ is int else env[a]
    y = b if b.__class__ is int else env[b]
    op = ln.op
    if op == "<":
        return x < y
    if op == ">":
        return x > y
    return CMP[op](x, y)


# --- the reference tracer ---------------------------------------------------------------------
def run_settrace(code: str, value_range=(-99, 99), max_loop_iterations: int = 100) -> Execution:
    """Execute ``code`` under :func:`sys.settrace` and record each line event with the
    variables bound before it (``f_locals`` of the module frame). The code is first parsed
    with :func:`tinytrace.program.parse`, so only the supported language ever runs."""
    lines = parse(code)
    lo, hi = value_range
    compiled = compile(code, "<snippet>", "exec")
    body_of = _while_bodies(lines)
    steps: list[tuple[int, State]] = []
    loops: dict[int, int] = {}
    last = [None]

    def snapshot(f_locals) -> State:
        items = tuple((k, v) for k, v in f_locals.items() if len(k) == 1 and "a" <= k <= "z")
        for _, v in items:
            if v < lo or v > hi:
                raise Rejected("value_range")
        return items

    def local(frame, event, arg):
        if event == "line":
            i = frame.f_lineno - 1
            steps.append((i, snapshot(frame.f_locals)))
            prev = last[0]
            if prev is not None and prev in body_of and i in body_of[prev]:
                n = loops.get(prev, 0) + 1
                if n > max_loop_iterations:
                    raise Rejected("loop_cap")
                loops[prev] = n
            last[0] = i
        return local

    def global_(frame, event, arg):
        return local if frame.f_code is compiled else None

    env: dict = {"__builtins__": {}}
    old = sys.gettrace()
    sys.settrace(global_)
    try:
        exec(compiled, env)
    except Rejected:
        raise
    except Exception as e:
        raise Rejected("exception", f"{type(e).__name__}: {e}") from None
    finally:
        sys.settrace(old)
    return Execution(steps, snapshot(env))


def _while_bodies(lines: list[Line]) -> dict[int, set[int]]:
    """For each ``while`` line, the indices of the lines in its body."""
    out = {}
    for i, ln in enumerate(lines):
        if ln.kind == WHILE:
            j = i + 1
            while j < len(lines) and lines[j].indent > ln.indent:
                j += 1
            out[i] = set(range(i + 1, j))
    return out


# --- formatting ---------------------------------------------------------------------------------
class PairText(dict):
    """``(name, value) -> "name?value"``, each text made once, on first use."""

    def __missing__(self, key):
        text = self[key] = f"{key[0]}?{key[1]}"
        return text


PAIR_TEXT = PairText()


def state_text(state: State) -> str:
    """``a?5;c?3``: the variables in first-assignment order."""
    return ";".join(map(PAIR_TEXT.__getitem__, state))


def format_example(lines: list[Line], ex: Execution) -> str:
    """The example text (without the blank line that separates examples); plain version of
    :func:`make_example`, kept as the readable definition of the format."""
    src = ["\t" * ln.indent + ln.text() for ln in lines]
    parts = ["\n".join(src)]
    for i, state in ex.steps:
        block = src[:i] + ["@" + src[i] + "$" + state_text(state)] + src[i + 1 :]
        parts.append("\n".join(block))
    parts.append("\n".join(src) + "\n@^$" + state_text(ex.final))
    return "\n#STEP\n".join(parts)


@dataclass
class Example:
    """A traced snippet: its code, the example text (without the separating blank line), its
    token ids as bytes (ending with the end-of-example token) and the length in tokens of each
    part: the snippet, then each step block and the final block, each counted with the
    ``#STEP`` token that opens it (the final one also with the end-of-example token)."""

    code: str
    text: str
    tokens: bytes
    part_lengths: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


_PSEP, _PEOS = tk.PACKED[tk.STEP], tk.PACKED[tk.EOS]
_INDENT = ["\t" * k for k in range(16)]  # grown when a deeper snippet comes


def make_example(lines: list[Line], ex: Execution) -> Example:
    """Text and tokens of an example (:func:`pack_example`, then :func:`unpack_examples`)."""
    rows = [ln.row() for ln in lines]
    steps = [(i, state_text(state)) for i, state in ex.steps]
    packed, parts = pack_example(rows, steps, state_text(ex.final))
    (code,), (text,), (tokens,) = unpack_examples([packed], [sum(parts)])
    return Example(code, text, tokens, parts)


def pack_example(rows: list[tuple], steps: list[tuple[int, str]], final: str) -> tuple[str, list[int]]:
    """The example of ``(kind, indent, target, a, op, b)`` rows in packed text
    (:data:`tokenizer.PACKED`: one character per token, spaces aside) and the length in tokens
    of each part (:class:`Example`). ``steps``: (line index, state text) per executed line;
    ``final``: the final state text (:func:`state_text`).

    Each block is the snippet with its line i as ``@line$state``. Spaces are the only
    characters that are not tokens and a state is one token per character, so the lengths are
    counted without tokenizing."""
    P, ind_ = tk.PACKED, _INDENT
    src = []
    try:
        for kind, ind, t, a, op, b in rows:
            if kind == ASSIGN:
                src.append(f"{ind_[ind]}{t} = {a}" if op is None else f"{ind_[ind]}{t} = {a} {P[op]} {b}")
            elif kind == ELSE:
                src.append(f"{ind_[ind]}{P[ELSE]}:")
            else:
                src.append(f"{ind_[ind]}{P[kind]} {a} {P[op]} {b}:")
    except IndexError:  # deeper than any snippet so far
        _INDENT.extend("\t" * k for k in range(len(_INDENT), max(r[1] for r in rows) + 1))
        return pack_example(rows, steps, final)
    code = "\n".join(src)
    blocks = [code]
    n_code = len(code) - code.count(" ")
    parts = [n_code]
    step_len = n_code + 3  # `#STEP`, the snippet, `@` and `$`, before the state
    for i, st in steps:
        block = src.copy()
        block[i] = f"@{src[i]}${st}"
        blocks.append("\n".join(block))
        parts.append(step_len + len(st))
    blocks.append(f"{code}\n@^${final}")
    parts.append(step_len + len(final) + 3)  # `\n`, `^` and the end-of-example token
    return _PSEP.join(blocks), parts


def unpack_examples(packed: list[str], n_tokens: list[int], lexemes=None):
    """Snippets, example texts and token ids (bytes, each ending with the end-of-example
    token) of packed examples, all converted in one pass (``n_tokens``: each example's
    length, to cut the token stream). ``lexemes``: the multi-character lexemes they may hold
    (found in the text when None)."""
    if not packed:
        return [], [], []
    text = _PEOS.join(packed)
    stream = tk.packed_tokens(text + _PEOS)  # `_PEOS` is the end-of-example token
    ends = list(accumulate(n_tokens))
    if len(stream) != ends[-1]:
        raise ValueError("the token counts do not match the packed examples")
    for w in tk.packed_lexemes(text) if lexemes is None else [tk.STEP, *lexemes]:
        text = text.replace(tk.PACKED[w], w)
    texts = text.split(_PEOS)
    codes = [t.partition(tk.STEP)[0] for t in texts]
    return codes, texts, [stream[e - n:e] for e, n in zip(ends, n_tokens)]


def max_step_pair_tokens(part_lengths: list[int]) -> int:
    """Longest span the evaluator must hold at once: two consecutive step blocks, from the
    ``#STEP`` opening the first to the token ending the second (the next ``#STEP`` excluded,
    the end-of-example token included), as the authors' determinism filter measures it
    (Sec. 2.2, C.5)."""
    return max(map(operator.add, part_lengths[1:-1], part_lengths[2:]))


def trace(code: str, value_range=(-99, 99), max_loop_iterations: int = 100) -> str:
    """Trace a snippet given as text (parsed first: nothing outside the language runs)."""
    lines = parse(code)
    return format_example(lines, run(lines, value_range, max_loop_iterations))
