"""In-distribution semantics-preserving edits (paper Sec. 4.1, App. D Fig. 11, App. E).

Five operators, each applied alone, at one random site of a snippet:

1. ``variable_renaming``: every variable gets another name from ``config.variables``
   (a consistent bijection, so the trace is the same up to names);
2. ``comparison_symmetry``: one ``if``/``elif`` condition ``a < b`` becomes ``b > a`` (operands
   swapped, comparator flipped: ``<``/``>``, ``<=``/``>=``; ``==`` and ``!=`` stay);
3. ``addition_commutativity``: one ``x = a + b`` becomes ``x = b + a`` (never ``-``);
4. ``neutral_operator``: one single-operand assignment ``x = y`` becomes ``x = y + 0`` (or ``- 0``);
5. ``neutral_assignment``: a new ``v = <literal>`` with a fresh name ``v`` is inserted at a random
   position and valid indentation; nothing reads ``v``, so the other variables' trace is unchanged.

Every edit is ``edit(lines, rng, config) -> EditResult`` and never mutates its input. An edit that
cannot apply returns a result with ``lines=None`` and a ``reason``; one that would exceed the
statement limit is dropped (reason ``"statement limit"``), as the paper discards altered snippets
over 10 statements. :func:`apply_edit` also re-traces the edited snippet (its new ground truth) and
checks that it stays in the generator's distribution; :func:`edit_dataset` builds one altered test
set (Sec. 4.1: Fig. 3 on correctly traced snippets, App. E Fig. 12 on the full test set).

The ``while`` template of the generator (``c = k``, ``while c < m:``, ``c = c + 1``) is left in its
generated shape: its lines are not edit sites and no line is inserted inside it.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from .config import GeneratorConfig, get_preset
from .program import (
    ASSIGN,
    ELIF,
    ELSE,
    IF,
    WHILE,
    Line,
    cooccurring_pairs,
    operand_pairs,
    parse,
    render,
)
from .tracer import Rejected, format_example, run

SYMMETRIC = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}


@dataclass
class EditResult:
    """One application of an edit. Applied: ``lines`` is the edited snippet, ``description``
    says what changed, ``line`` is the index of the changed or inserted line (``None`` for a
    renaming, which has ``mapping`` old -> new). Not applied: ``lines is None`` and ``reason``
    says why. :func:`apply_edit` fills ``code``, ``trace`` and ``in_distribution``."""

    edit: str
    lines: list[Line] | None = None
    description: str = ""
    reason: str | None = None
    line: int | None = None
    mapping: dict[str, str] | None = None
    code: str | None = None
    trace: str | None = None
    in_distribution: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.lines is not None

    def __bool__(self) -> bool:
        return self.applied


def _copy(lines: list[Line]) -> list[Line]:
    return [Line(ln.kind, ln.indent, ln.target, ln.a, ln.op, ln.b) for ln in lines]


def _show(ln: Line) -> str:
    return "`" + ln.text() + "`"


def _while_template(lines: list[Line]) -> set[int]:
    """Indices of the generator's ``while`` templates: ``c = k``, ``while c < m:``, ``c = c + 1``."""
    out = set()
    for i, ln in enumerate(lines):
        if ln.kind != WHILE:
            continue
        out.add(i)
        if i > 0 and lines[i - 1].kind == ASSIGN and lines[i - 1].target == ln.a and lines[i - 1].op is None:
            out.add(i - 1)
        if i + 1 < len(lines):
            nxt = lines[i + 1]
            if nxt.kind == ASSIGN and nxt.target == ln.a == nxt.a and nxt.op == "+" and nxt.b == 1:
                out.add(i + 1)
    return out


def _not_applied(edit: str, reason: str) -> EditResult:
    return EditResult(edit, reason=reason, description=f"not applied: {reason}")


# --- the five edits -------------------------------------------------------------------------------
def variable_renaming(lines: list[Line], rng: random.Random, config: GeneratorConfig) -> EditResult:
    """Rename every variable to another letter of ``config.variables`` (a bijection with no
    fixed point), keeping the variable-pair constraints of the config (Sec. 4.2)."""
    name = "variable_renaming"
    used = list(dict.fromkeys(v for ln in lines for v in ln.variables()))
    if not used:
        return _not_applied(name, "no variable")
    pool = list(config.variables)
    if len(pool) < len(used) or (len(pool) == 1 and used == pool):
        return _not_applied(name, "no free variable name")
    for _ in range(1000):
        new = rng.sample(pool, len(used))
        if any(u == v for u, v in zip(used, new)):
            continue
        mapping = dict(zip(used, new))
        edited = _copy(lines)
        for ln in edited:
            ln.target = mapping.get(ln.target, ln.target)
            ln.a = mapping.get(ln.a, ln.a) if isinstance(ln.a, str) else ln.a
            ln.b = mapping.get(ln.b, ln.b) if isinstance(ln.b, str) else ln.b
        if _pair_problems(edited, config):
            continue
        desc = "renamed " + ", ".join(f"{u}->{v}" for u, v in mapping.items())
        return EditResult(name, edited, desc, mapping=mapping)
    return _not_applied(name, "no renaming keeps the variable-pair constraints")


def comparison_symmetry(lines: list[Line], rng: random.Random, config: GeneratorConfig) -> EditResult:
    """``if a < b:`` -> ``if b > a:`` on one ``if``/``elif`` condition."""
    name = "comparison_symmetry"
    headers = [i for i, ln in enumerate(lines) if ln.kind in (IF, ELIF)]
    if not headers:
        return _not_applied(name, "no comparison")
    sites = [
        i for i in headers
        if SYMMETRIC[lines[i].op] in config.comparisons
        and (lines[i].a != lines[i].b or lines[i].op != SYMMETRIC[lines[i].op])  # must change
    ]
    if not sites:
        return _not_applied(name, "no comparison with an allowed symmetric comparator")
    i = rng.choice(sites)
    edited = _copy(lines)
    old = lines[i]
    edited[i] = Line(old.kind, old.indent, None, old.b, SYMMETRIC[old.op], old.a)
    return EditResult(name, edited, f"line {i + 1}: {_show(old)} -> {_show(edited[i])}", line=i)


def addition_commutativity(lines: list[Line], rng: random.Random, config: GeneratorConfig) -> EditResult:
    """``x = a + b`` -> ``x = b + a`` on one addition (subtraction does not commute)."""
    name = "addition_commutativity"
    template = _while_template(lines)
    additions = [i for i, ln in enumerate(lines) if ln.kind == ASSIGN and ln.op == "+" and i not in template]
    if not additions:
        return _not_applied(name, "no addition")
    sites = [i for i in additions if lines[i].a != lines[i].b]
    if not sites:
        return _not_applied(name, "no addition with distinct operands")
    i = rng.choice(sites)
    edited = _copy(lines)
    old = lines[i]
    edited[i] = Line(ASSIGN, old.indent, old.target, old.b, "+", old.a)
    return EditResult(name, edited, f"line {i + 1}: {_show(old)} -> {_show(edited[i])}", line=i)


def neutral_operator(lines: list[Line], rng: random.Random, config: GeneratorConfig) -> EditResult:
    """``x = y`` -> ``x = y + 0`` or ``x = y - 0`` on one single-operand assignment. With one
    operator per snippet (the base distribution) the snippet's operator is used, if it is
    ``+`` or ``-``."""
    name = "neutral_operator"
    template = _while_template(lines)
    sites = [i for i, ln in enumerate(lines) if ln.kind == ASSIGN and ln.op is None and i not in template]
    if not sites:
        return _not_applied(name, "no single-operand assignment")
    ops = [op for op in ("+", "-") if op in config.arith_ops]
    snippet_ops = _snippet_ops(lines)
    if config.one_op_per_snippet and snippet_ops:
        ops = [op for op in ops if op in snippet_ops]
    if not ops:
        return _not_applied(name, "no neutral operator (+ 0 or - 0) allowed")
    i = rng.choice(sites)
    op = rng.choice(ops)
    edited = _copy(lines)
    old = lines[i]
    edited[i] = Line(ASSIGN, old.indent, old.target, old.a, op, 0)
    return EditResult(name, edited, f"line {i + 1}: {_show(old)} -> {_show(edited[i])}", line=i)


def neutral_assignment(lines: list[Line], rng: random.Random, config: GeneratorConfig) -> EditResult:
    """Insert ``v = <literal>`` with a fresh name ``v`` at a random position and indentation."""
    name = "neutral_assignment"
    if len(lines) + 1 > config.max_statements:
        return _not_applied(name, "statement limit")
    used = {v for ln in lines for v in ln.variables()}
    fresh = [v for v in config.variables if v not in used]
    if not fresh:
        return _not_applied(name, "no free variable name")
    sites = insertion_sites(lines)
    if not sites:
        return _not_applied(name, "no insertion site")
    pos, indent = rng.choice(sites)
    lo, hi = config.value_range
    lo, hi = max(lo, -config.max_literal), min(hi, config.max_literal)
    if lo > hi:
        return _not_applied(name, "no literal in range")
    new = Line(ASSIGN, indent, rng.choice(fresh), rng.randint(lo, hi))
    edited = _copy(lines)
    edited.insert(pos, new)
    text = "\t" * indent + new.text()
    return EditResult(name, edited, f"inserted line {pos + 1}: {text!r}", line=pos)


def insertion_sites(lines: list[Line]) -> list[tuple[int, int]]:
    """Every (position, indent) where a new assignment keeps the block structure: the first line
    of a block right after its header; after an assignment, any level from the next line's
    (one deeper if that line continues an ``if`` chain) to the assignment's own."""
    template = _while_template(lines)
    sites = []
    for pos in range(len(lines) + 1):
        if pos == 0:
            levels = [0]
        else:
            prev = lines[pos - 1]
            if pos - 1 in template and pos in template:
                continue  # inside the generator's while template
            if prev.kind != ASSIGN:
                levels = [prev.indent + 1]
            else:
                nxt = lines[pos] if pos < len(lines) else None
                low = 0 if nxt is None else nxt.indent + (nxt.kind in (ELIF, ELSE))
                levels = list(range(low, prev.indent + 1))
        sites += [(pos, k) for k in levels]
    return sites


EDITS = {
    "variable_renaming": variable_renaming,
    "comparison_symmetry": comparison_symmetry,
    "addition_commutativity": addition_commutativity,
    "neutral_operator": neutral_operator,
    "neutral_assignment": neutral_assignment,
}
EDIT_NAMES = tuple(EDITS)  # the five edits, in the order listed above


# --- distribution check -----------------------------------------------------------------------------
def _snippet_ops(lines: list[Line]) -> set[str]:
    """Arithmetic operators of the snippet, the ``while`` templates' ``c = c + 1`` excepted."""
    template = _while_template(lines)
    return {ln.op for i, ln in enumerate(lines) if ln.kind == ASSIGN and ln.op and i not in template}


def _pair_problems(lines: list[Line], config: GeneratorConfig) -> list[str]:
    forbidden = config.forbidden_pair_set()
    if not forbidden:
        return []
    if config.require_forbidden_pair:
        return [] if forbidden.intersection(operand_pairs(lines)) else ["no forbidden pair"]
    pairs = cooccurring_pairs(lines) if config.exclusion_scope == "global" else operand_pairs(lines)
    bad = sorted(forbidden.intersection(pairs))
    return [f"forbidden pairs {bad}"] if bad else []


def distribution_problems(lines: list[Line], config: GeneratorConfig) -> list[str]:
    """Why ``lines`` could not come from ``config``'s generator and runtime filters (empty if
    it could): statement count, depth, ``if`` count per depth, constructs, operators,
    comparisons, variables, literals, variable pairs, and the runtime filter."""
    c = config
    out = []
    n = len(lines)
    if not c.min_statements <= n <= c.max_statements:
        out.append(f"{n} statements, not in [{c.min_statements}, {c.max_statements}]")
    depth = max((ln.indent for ln in lines), default=0)
    if not c.min_depth <= depth <= c.max_depth:
        out.append(f"depth {depth}, not in [{c.min_depth}, {c.max_depth}]")
    if c.max_ifs_per_depth is not None:
        per_depth = Counter(ln.indent for ln in lines if ln.kind == IF)
        if any(k > c.max_ifs_per_depth for k in per_depth.values()):
            out.append(f"more than {c.max_ifs_per_depth} if headers at one depth")
    for kind in (WHILE, ELIF, ELSE):
        if not c.move_weights.get(kind) and any(ln.kind == kind for ln in lines):
            out.append(f"`{kind}` is not generated")
    ops = _snippet_ops(lines)
    if ops - set(c.arith_ops):
        out.append(f"operators {sorted(ops - set(c.arith_ops))} not allowed")
    if c.one_op_per_snippet and len(ops) > 1:
        out.append(f"operators {sorted(ops)}: one per snippet")
    cmps = {ln.op for ln in lines if ln.kind in (IF, ELIF, WHILE)}
    if cmps - set(c.comparisons):
        out.append(f"comparisons {sorted(cmps - set(c.comparisons))} not allowed")
    names = {v for ln in lines for v in ln.variables()}
    if names - set(c.variables):
        out.append(f"variables {sorted(names - set(c.variables))} not allowed")
    for ln in lines:
        bound = c.max_literal + (c.while_span if ln.kind == WHILE else 0)
        lits = [x for x in (ln.a, ln.b) if isinstance(x, int)]
        if any(abs(x) > bound for x in lits):
            out.append(f"literal out of range in {_show(ln)}")
    out += _pair_problems(lines, c)
    try:
        run(lines, c.value_range, c.max_loop_iterations)
    except Rejected as r:
        out.append(f"runtime filter: {r.reason}")
    return out


# --- applying edits ----------------------------------------------------------------------------------
def apply_edit(name: str, code_or_lines, rng, config: GeneratorConfig | None = None) -> EditResult:
    """Apply edit ``name`` to a snippet (text or lines) and re-trace it: the result's ``code``,
    ``trace`` (the example text of :func:`tinytrace.tracer.format_example`) and
    ``in_distribution`` are set when the edit applies. ``rng`` is a ``random.Random`` or a seed."""
    if name not in EDITS:
        raise ValueError(f"unknown edit {name!r}; choose from {', '.join(EDITS)}")
    config = config or get_preset("base")
    lines = parse(code_or_lines) if isinstance(code_or_lines, str) else code_or_lines
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    res = EDITS[name](lines, rng, config)
    if not res.applied:
        return res
    res.code = render(res.lines)
    res.problems = distribution_problems(res.lines, config)
    res.in_distribution = not res.problems
    try:
        res.trace = format_example(res.lines, run(res.lines, config.value_range, config.max_loop_iterations))
    except Rejected:
        pass  # recorded in problems
    return res


class EditedSet(list):
    """The rows of one altered test set, with ``skipped``: reason -> count of inputs the edit
    did not apply to (or whose edit left the distribution), and ``n_input``."""

    def __init__(self, rows, skipped: Counter, n_input: int, edit: str):
        super().__init__(rows)
        self.skipped, self.n_input, self.edit = skipped, n_input, edit

    def summary(self) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common()) or "none"
        return f"{self.edit}: {len(self)}/{self.n_input} edited; skipped: {why}"


def _rows(data) -> list:
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas
        return data.to_dict("records")
    return list(data)


def edit_dataset(data, name: str, seed: int = 0, config: GeneratorConfig | None = None) -> EditedSet:
    """Apply edit ``name`` once to every snippet of ``data`` (a ``datasets.Dataset``, a DataFrame,
    dicts with ``code``, or code strings): one altered test set (Sec. 4.1). Each row has
    ``index`` (of the original), ``code``, ``trace`` (what :func:`tinytrace.evaluate.evaluate`
    reads), ``original_code``, ``edit``, ``description``, ``n_statements``, ``max_depth``.
    Snippets the edit cannot apply to, or whose edit leaves the distribution, are left out and
    counted by reason in ``.skipped``. Row ``i`` uses its own random stream (from ``seed``,
    ``name`` and ``i``), so its edit does not depend on the other rows."""
    config = config or get_preset("base")
    if name not in EDITS:
        raise ValueError(f"unknown edit {name!r}; choose from {', '.join(EDITS)}")
    rows = _rows(data)
    out, skipped = [], Counter()
    for i, row in enumerate(rows):
        code = row if isinstance(row, str) else row["code"]
        res = apply_edit(name, code, random.Random(f"tinytrace-edit/{seed}/{name}/{i}"), config)
        if not res.applied:
            skipped[res.reason] += 1
        elif not res.in_distribution:
            skipped["out of distribution: " + res.problems[0]] += 1
        else:
            out.append({
                "index": i,
                "code": res.code,
                "trace": res.trace,
                "original_code": code,
                "edit": name,
                "description": res.description,
                "n_statements": len(res.lines),
                "max_depth": max(ln.indent for ln in res.lines),
            })
    return EditedSet(out, skipped, len(rows), name)
