"""Snippets as structured lines: canonical text, tokens and the nesting structure.

A snippet is a list of :class:`Line` (one per source line, indentation one tab per level).
The generator emits them, the fast tracer executes them, and :func:`parse` rebuilds them from
text with :mod:`ast` (never executing anything), rejecting whatever lies outside the language.

Counting (paper Sec. 3.2, App. F): every line is one *statement* (an assignment or the header of
an ``if``/``elif``/``else``/``while``); the *nesting depth* is the deepest indentation level, so
a single ``if`` inside an ``if`` has depth 2 and straight-line code depth 0.
"""
from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from typing import Union

from . import tokenizer as tk

Operand = Union[str, int]  # a variable name or an integer literal
ASSIGN, IF, ELIF, ELSE, WHILE = "assign", "if", "elif", "else", "while"
BLOCK_KINDS = (IF, ELIF, ELSE, WHILE)


@dataclass(slots=True)
class Line:
    """One source line. ``assign``: ``target = a [op b]``; ``if/elif/while``: ``a op b``."""

    kind: str
    indent: int
    target: str | None = None
    a: Operand | None = None
    op: str | None = None
    b: Operand | None = None

    def row(self) -> tuple:
        """``(kind, indent, target, a, op, b)``: the tuple form of the generator's fast path."""
        return (self.kind, self.indent, self.target, self.a, self.op, self.b)

    def text(self) -> str:
        """The line without its indentation, canonically spaced."""
        if self.kind == ASSIGN:
            if self.op is None:
                return f"{self.target} = {self.a}"
            return f"{self.target} = {self.a} {self.op} {self.b}"
        if self.kind == ELSE:
            return "else:"
        return f"{self.kind} {self.a} {self.op} {self.b}:"

    def tokens(self) -> list[int]:
        """Token ids of :meth:`text` (equal to ``tokenizer.encode(self.text())``)."""
        S, ot = tk.STOI, tk.operand_tokens
        if self.kind == ASSIGN:
            t = [S[self.target], S["="], *ot(self.a)]
            if self.op is not None:
                t += [S[self.op], *ot(self.b)]
            return t
        if self.kind == ELSE:
            return [S["else"], S[":"]]
        return [S[self.kind], *ot(self.a), S[self.op], *ot(self.b), S[":"]]

    def variables(self) -> list[str]:
        """Variable occurrences in source order (target first)."""
        return [x for x in (self.target, self.a, self.b) if isinstance(x, str)]


def render(lines: list[Line]) -> str:
    return "\n".join("\t" * ln.indent + ln.text() for ln in lines)


def n_statements(lines: list[Line]) -> int:
    return len(lines)


def max_depth(lines: list[Line]) -> int:
    return max((ln.indent for ln in lines), default=0)


# --- variable pairs (Sec. 4.2, 4.2.1) ---------------------------------------------------------
def pair(u: str, v: str) -> str:
    """The unordered pair of two variables as a sorted two-letter string (``pair("b", "a") ==
    "ab"``): the form of ``GeneratorConfig.forbidden_pairs`` and the corpus columns."""
    return u + v if u <= v else v + u


def operand_pairs(lines: list[Line], only: set[int] | None = None) -> list[str]:
    """Unordered operand pairs of ``x = u op v`` assignments with two variables (Sec. 4.2), in
    line order; with ``only``, just the lines whose index is in it."""
    return [
        pair(ln.a, ln.b)
        for i, ln in enumerate(lines)
        if ln.kind == ASSIGN
        and ln.op is not None
        and ln.a.__class__ is str
        and ln.b.__class__ is str
        and (only is None or i in only)
    ]


def cooccurring_pairs(lines: list[Line]) -> list[str]:
    """Every unordered pair of variable occurrences inside one statement (Sec. 4.2.1), sorted."""
    out = set()
    for ln in lines:
        vs = ln.variables()
        for i in range(len(vs)):
            for j in range(i + 1, len(vs)):
                out.add(pair(vs[i], vs[j]))
    return sorted(out)


class UnsupportedCode(ValueError):
    """The text is not in the TinyTracing language (raised before anything runs)."""


_AST_CMP = {ast.Lt: "<", ast.Gt: ">", ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_AST_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}


def parse(code: str) -> list[Line]:
    """Parse a snippet into lines, accepting only the TinyTracing language (App. B):
    single-letter variables, integer literals, ``x = a [op b]``, ``if/elif/else`` and ``while``
    with one comparison, one tab per indentation level, each line spaced as :meth:`Line.text`
    writes it (the trace copies the snippet). Nothing is executed. Python's own
    parser warnings (e.g. ``invalid decimal literal`` for ``5if``) are silenced: this function
    reports what is wrong itself."""
    code = code.strip("\n")
    if not code.strip():
        raise UnsupportedCode("empty snippet")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except SyntaxError as e:
        raise UnsupportedCode(f"line {e.lineno}: syntax error: {e.msg}") from None
    src = code.split("\n")
    lines: list[Line] = []
    _parse_block(tree.body, 0, lines, src)
    if len(lines) != len(src):
        raise UnsupportedCode("one statement per line is required (no blank lines, ';' or comments)")
    for i, (ln, got) in enumerate(zip(lines, src), 1):
        if got[: len(got) - len(got.lstrip())] != "\t" * ln.indent:
            raise UnsupportedCode(f"line {i}: indent with one tab per nesting level")
        # the trace copies the snippet as the language writes it: a comment, parentheses or
        # other spacing would be dropped from the copy without a word
        if got.strip() != ln.text():
            raise UnsupportedCode(f"line {i}: write {got.strip()!r} as {ln.text()!r} (no comments "
                                  "or parentheses, one space around each operator)")
    return lines


def _operand(node: ast.AST, lineno: int) -> Operand:
    if isinstance(node, ast.Name):
        if len(node.id) == 1 and "a" <= node.id <= "z":
            return node.id
        raise UnsupportedCode(f"line {lineno}: variable {node.id!r}: only single letters a-z")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    raise UnsupportedCode(f"line {lineno}: unsupported expression {ast.unparse(node)!r}")


def _condition(node: ast.AST, lineno: int) -> tuple[Operand, str, Operand]:
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and type(node.ops[0]) in _AST_CMP
    ):
        return _operand(node.left, lineno), _AST_CMP[type(node.ops[0])], _operand(
            node.comparators[0], lineno
        )
    raise UnsupportedCode(f"line {lineno}: unsupported condition {ast.unparse(node)!r}")


def _parse_block(body: list[ast.stmt], indent: int, out: list[Line], src: list[str]) -> None:
    for node in body:
        lineno = node.lineno
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                raise UnsupportedCode(f"line {lineno}: only `x = ...` assignments")
            target = _operand(node.targets[0], lineno)
            v = node.value
            if isinstance(v, ast.BinOp) and type(v.op) in _AST_ARITH:
                left, right = _operand(v.left, lineno), _operand(v.right, lineno)
                out.append(Line(ASSIGN, indent, target, left, _AST_ARITH[type(v.op)], right))
            else:
                out.append(Line(ASSIGN, indent, target, _operand(v, lineno)))
        elif isinstance(node, ast.If):
            _parse_if(node, indent, out, src, IF)
        elif isinstance(node, ast.While):
            if node.orelse:
                raise UnsupportedCode(f"line {lineno}: `while ... else` is not supported")
            a, op, b = _condition(node.test, lineno)
            out.append(Line(WHILE, indent, None, a, op, b))
            _parse_block(node.body, indent + 1, out, src)
        else:
            first = ast.unparse(node).splitlines()[0]
            raise UnsupportedCode(
                f"line {lineno}: unsupported statement {type(node).__name__} ({first!r})"
            )


def _parse_if(node: ast.If, indent: int, out: list[Line], src: list[str], kind: str) -> None:
    a, op, b = _condition(node.test, node.lineno)
    out.append(Line(kind, indent, None, a, op, b))
    _parse_block(node.body, indent + 1, out, src)
    orelse = node.orelse
    # ast has no elif node: an `elif` is an If alone in orelse whose line starts with `elif`.
    if (
        len(orelse) == 1
        and isinstance(orelse[0], ast.If)
        and src[orelse[0].lineno - 1].lstrip().startswith("elif")
    ):
        _parse_if(orelse[0], indent, out, src, ELIF)
    elif orelse:
        out.append(Line(ELSE, indent))
        _parse_block(orelse, indent + 1, out, src)
