import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytrace.data import Pipeline
from tinytrace.evaluate import make_records
from tinytrace.lang.config import get_preset
from tinytrace.lang.edits import (
    EDIT_NAMES,
    EDITS,
    SYMMETRIC,
    apply_edit,
    distribution_problems,
    edit_dataset,
    insertion_sites,
)
from tinytrace.lang.generator import Generator
from tinytrace.lang.program import ASSIGN, ELIF, IF, Line, parse, render
from tinytrace.lang.tracer import Rejected, format_example, run

BASE, FULL = get_preset("base"), get_preset("full")


def snippets(config, n, seed=0):
    """``n`` generated snippets that pass the runtime filter."""
    gen, rng, out = Generator(config), random.Random(seed), []
    while len(out) < n:
        lines = gen.generate(rng)
        try:
            run(lines, config.value_range, config.max_loop_iterations)
        except Rejected:
            continue
        out.append(lines)
    return out


BASE_SNIPPETS = snippets(BASE, 300)
FULL_SNIPPETS = snippets(FULL, 150, seed=1)


def copies(lines):
    return [Line(ln.kind, ln.indent, ln.target, ln.a, ln.op, ln.b) for ln in lines]


def edit_all(config, snippet_list, name, seed=0):
    """(original, result) for every snippet, the input checked unmutated."""
    out = []
    for k, lines in enumerate(snippet_list):
        before = copies(lines)
        res = apply_edit(name, lines, random.Random(f"{seed}/{k}"), config)
        assert lines == before, f"{name} mutated its input"
        out.append((lines, res))
    return out


def check_same_semantics(name, orig, res, config):
    """The edited snippet runs the same lines (the inserted one aside) with the same values."""
    ex0 = run(orig, config.value_range, config.max_loop_iterations)
    ex1 = run(res.lines, config.value_range, config.max_loop_iterations)
    steps, final = ex1.steps, ex1.final
    if name == "variable_renaming":
        back = {v: k for k, v in res.mapping.items()}
        assert len(back) == len(res.mapping)  # injective
        steps = [(i, tuple((back[k], v) for k, v in s)) for i, s in steps]
        final = tuple((back[k], v) for k, v in final)
    elif name == "neutral_assignment":
        pos, new = res.line, res.lines[res.line].target
        drop = lambda s: tuple(kv for kv in s if kv[0] != new)
        steps = [(i - (i > pos), drop(s)) for i, s in steps if i != pos]
        final = drop(final)
    assert final == ex0.final
    assert steps == ex0.steps


@pytest.mark.parametrize("config,snippet_list", [(BASE, BASE_SNIPPETS), (FULL, FULL_SNIPPETS)],
                         ids=["base", "full"])
@pytest.mark.parametrize("name", list(EDITS))
def test_edits_preserve_semantics_and_distribution(name, config, snippet_list):
    applied = 0
    for orig, res in edit_all(config, snippet_list, name):
        if not res:
            assert res.reason and res.lines is None
            continue
        applied += 1
        assert res.in_distribution, (res.problems, res.code)
        assert res.trace == format_example(res.lines, run(res.lines, config.value_range, 10))
        assert parse(res.code) == res.lines
        check_same_semantics(name, orig, res, config)
    assert applied >= len(snippet_list) // 5, f"{name} applied only {applied} times"


def test_generated_snippets_are_in_distribution():
    # the checker agrees with the generator, so `in_distribution` is meaningful
    for config, lst in ((BASE, BASE_SNIPPETS), (FULL, FULL_SNIPPETS)):
        for lines in lst:
            assert distribution_problems(lines, config) == [], render(lines)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), name=st.sampled_from(list(EDITS)))
def test_edits_hypothesis(seed, name):
    rng = random.Random(seed)
    lines = Generator(BASE).generate(rng)
    try:
        run(lines, BASE.value_range, BASE.max_loop_iterations)
    except Rejected:
        return
    before = copies(lines)
    res = apply_edit(name, lines, rng, BASE)
    assert lines == before
    if res:
        assert res.in_distribution, res.problems
        check_same_semantics(name, lines, res, BASE)


def changed_lines(a, b):
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]


def test_comparison_symmetry_changes_one_header():
    applied = 0
    for orig, res in edit_all(FULL, FULL_SNIPPETS + BASE_SNIPPETS, "comparison_symmetry"):
        if not res:
            continue
        applied += 1
        (i,) = changed_lines(orig, res.lines)
        o, e = orig[i], res.lines[i]
        assert i == res.line and o.kind in (IF, ELIF) and e.kind == o.kind and e.indent == o.indent
        assert (e.a, e.op, e.b) == (o.b, SYMMETRIC[o.op], o.a)
    assert applied


def test_addition_commutativity_changes_one_addition():
    applied = 0
    for orig, res in edit_all(BASE, BASE_SNIPPETS, "addition_commutativity"):
        if not res:
            continue
        applied += 1
        (i,) = changed_lines(orig, res.lines)
        o, e = orig[i], res.lines[i]
        assert o.op == e.op == "+" and (e.target, e.a, e.b) == (o.target, o.b, o.a)
    assert applied


def test_neutral_operator_appends_zero_to_one_single_operand_assignment():
    ops = Counter()
    for orig, res in edit_all(BASE, BASE_SNIPPETS, "neutral_operator"):
        if not res:
            continue
        (i,) = changed_lines(orig, res.lines)
        o, e = orig[i], res.lines[i]
        assert o.kind == ASSIGN and o.op is None
        assert (e.target, e.a, e.b) == (o.target, o.a, 0) and e.op in ("+", "-")
        ops[e.op] += 1
        assert res.code.split("\n")[i].endswith(f"{e.op} 0")
    assert ops["+"] and ops["-"]


def test_neutral_operator_uses_the_snippets_operator():
    lines = parse("a = 1\nb = a - 2\nc = b\nd = 3\ne = c")
    for seed in range(20):
        res = apply_edit("neutral_operator", lines, seed, BASE)
        assert res.lines[res.line].op == "-" and res.in_distribution, res


def test_neutral_assignment_inserts_one_fresh_line():
    applied = 0
    for orig, res in edit_all(BASE, BASE_SNIPPETS, "neutral_assignment"):
        if not res:
            assert res.reason == "statement limit" and len(orig) == BASE.max_statements
            continue
        applied += 1
        assert len(res.lines) == len(orig) + 1
        new = res.lines[res.line]
        assert new.kind == ASSIGN and new.op is None and isinstance(new.a, int)
        assert all(new.target not in ln.variables() for ln in orig)
        assert abs(new.a) <= BASE.max_literal
        assert res.lines[: res.line] + res.lines[res.line + 1:] == orig
    assert applied


def test_every_insertion_site_keeps_structure_and_semantics():
    # all sites, not just the sampled one: each parses back and leaves the trace unchanged
    for lines in FULL_SNIPPETS[:60] + BASE_SNIPPETS[:60]:
        ex0 = run(lines, FULL.value_range, FULL.max_loop_iterations)
        fresh = min(set(FULL.variables) - {v for ln in lines for v in ln.variables()})
        for pos, indent in insertion_sites(lines):
            edited = copies(lines)
            edited.insert(pos, Line(ASSIGN, indent, fresh, 7))
            assert parse(render(edited)) == edited
            ex1 = run(edited, FULL.value_range, FULL.max_loop_iterations)
            assert tuple(kv for kv in ex1.final if kv[0] != edited[pos].target) == ex0.final


def test_insertion_sites_include_blocks_and_all_levels():
    lines = parse("a = 1\nif a < 2:\n\tb = 3\n\tif b > 0:\n\t\tc = 4\nd = 5")
    assert insertion_sites(lines) == [
        (0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 0), (5, 1), (5, 2), (6, 0),
    ]
    chain = parse("a = 1\nif a < 2:\n\tb = 3\nelif a > 5:\n\tb = 4\nelse:\n\tb = 5")
    assert (3, 0) not in insertion_sites(chain) and (5, 0) not in insertion_sites(chain)
    assert (3, 1) in insertion_sites(chain) and (7, 0) in insertion_sites(chain)


def test_statement_limit():
    ten = [ln for ln in BASE_SNIPPETS if len(ln) == 10]
    assert ten
    for lines in ten:
        res = apply_edit("neutral_assignment", lines, 0, BASE)
        assert not res and res.reason == "statement limit"
    nine = parse("\n".join(f"{v} = {k}" for k, v in enumerate("abcdefghi")))
    assert apply_edit("neutral_assignment", nine, 0, BASE).in_distribution


def test_variable_renaming_is_a_bijection_keeping_structure():
    for orig, res in edit_all(BASE, BASE_SNIPPETS, "variable_renaming"):
        m = res.mapping
        used = {v for ln in orig for v in ln.variables()}
        assert set(m) == used and len(set(m.values())) == len(m)
        assert all(k != v for k, v in m.items()) and set(m.values()) <= set(BASE.variables)
        for o, e in zip(orig, res.lines, strict=True):
            assert (o.kind, o.indent, o.op) == (e.kind, e.indent, e.op)
            for x, y in ((o.target, e.target), (o.a, e.a), (o.b, e.b)):
                assert y == (m[x] if isinstance(x, str) else x)


def test_variable_renaming_keeps_forbidden_pairs_out():
    # 7 letters, 9 of the 28 pairs forbidden: an unconstrained renaming often hits one
    free = BASE.replace(variables="abcdefg")
    config = free.replace(forbidden_pairs=("ab", "ac", "bc", "ef", "eg", "fg", "af", "bg", "ce"))
    lines = parse("a = 1\nd = 2\nb = a + d\nc = b + d\ne = c + 1")
    assert distribution_problems(lines, config) == []
    unconstrained = [apply_edit("variable_renaming", lines, seed, free) for seed in range(40)]
    assert sum(bool(distribution_problems(r.lines, config)) for r in unconstrained) > 5
    for seed in range(40):
        res = apply_edit("variable_renaming", lines, seed, config)
        assert res.in_distribution, res.problems


@pytest.mark.parametrize("name,code,reason", [
    ("comparison_symmetry", "a = 1\nb = a + 2\nc = b\nd = 4\ne = d + c", "no comparison"),
    ("addition_commutativity", "a = 1\nb = a - 2\nif b < a:\n\tc = b\nd = 4", "no addition"),
    ("addition_commutativity", "a = 1\nb = a + a\nc = b\nd = 4\ne = 5", "no addition with distinct operands"),
    ("neutral_operator", "a = 1 + 2\nb = a + 2\nif b < a:\n\tc = b + 1\nd = 4 + a", "no single-operand assignment"),
    ("neutral_assignment", "\n".join(f"{v} = 1" for v in "abcdefghij"), "statement limit"),
])
def test_cannot_apply(name, code, reason):
    lines = parse(code)
    before = copies(lines)
    res = apply_edit(name, lines, 0, BASE)
    assert not res and res.lines is None and res.reason == reason and res.trace is None
    assert lines == before


def test_cannot_apply_config_limits():
    one = BASE.replace(variables="a")
    assert apply_edit("variable_renaming", "a = 1\na = a + 1\na = 2\na = 3\na = 4", 0, one).reason == (
        "no free variable name"
    )
    assert apply_edit("neutral_assignment", "a = 1\na = a + 1\na = 2\na = 3\na = 4", 0, one).reason == (
        "no free variable name"
    )
    lt_only = BASE.replace(comparisons=("<",))
    res = apply_edit("comparison_symmetry", "a = 1\nif a < 2:\n\tb = 1\nc = 1\nd = 1", 0, lt_only)
    assert res.reason == "no comparison with an allowed symmetric comparator"
    times = BASE.replace(arith_ops=("*",))
    assert apply_edit("neutral_operator", "a = 1\nb = a * 2\nc = b\nd = 1\ne = 1", 0, times).reason == (
        "no neutral operator (+ 0 or - 0) allowed"
    )


def test_comparison_symmetry_example_and_equality():
    res = apply_edit("comparison_symmetry", "a = 1\nif a < 5:\n\tb = a\nc = 2\nd = 3", 0, BASE)
    assert res.code == "a = 1\nif 5 > a:\n\tb = a\nc = 2\nd = 3" and res.line == 1
    assert "`if a < 5:` -> `if 5 > a:`" in res.description
    res = apply_edit("comparison_symmetry", "a = 1\nif a != 5:\n\tb = a\nc = 2\nd = 3", 0, FULL)
    assert res.code.split("\n")[1] == "if 5 != a:"


def test_edit_names():
    assert EDIT_NAMES == ("variable_renaming", "comparison_symmetry", "addition_commutativity",
                          "neutral_operator", "neutral_assignment") == tuple(EDITS)


def test_unknown_edit():
    with pytest.raises(ValueError, match="unknown edit"):
        apply_edit("reverse", "a = 1", 0, BASE)


def test_distribution_problems_detects_out_of_distribution():
    assert any("statements" in p for p in distribution_problems(parse("a = 1"), BASE))
    deep = parse("a = 1\nif a < 2:\n\tif a < 3:\n\t\tif a < 4:\n\t\t\tb = 1")
    assert any("depth" in p for p in distribution_problems(deep, BASE))
    mixed = parse("a = 1\nb = a + 1\nc = b - 1\nd = c * 2\ne = 200")
    problems = " ".join(distribution_problems(mixed, BASE))
    assert "'*'" in problems and "one per snippet" in problems and "literal" in problems
    assert any("runtime" in p for p in distribution_problems(parse("a = 1\nb = c\nd = 1\ne = 1\nf = 1"), BASE))


def test_edit_dataset_feeds_the_evaluator():
    pipe, rng, stats, data = Pipeline(BASE), random.Random(3), Counter(), []
    while len(data) < 60:
        r = pipe.sample(rng, stats)
        if r is not None:
            data.append({"code": r["code"], "trace": r["trace"]})
    for name in EDITS:
        edited = edit_dataset(data, name, seed=7, config=BASE)
        assert len(edited) + sum(edited.skipped.values()) == edited.n_input == len(data)
        assert edited.summary().startswith(f"{name}: {len(edited)}/60")
        recs = make_records(edited)
        assert len(recs) == len(edited)
        for row in edited:
            assert row["original_code"] == data[row["index"]]["code"] and row["edit"] == name
            assert row["trace"].startswith(row["code"] + "\n#STEP\n")
    same = edit_dataset(data, "neutral_assignment", seed=7, config=BASE)
    assert list(same) == list(edit_dataset(data, "neutral_assignment", seed=7, config=BASE))
    assert same.skipped.keys() <= {"statement limit"}


def test_edit_dataset_accepts_dataframes_and_strings():
    import pandas as pd

    codes = [render(ln) for ln in BASE_SNIPPETS[:20]]
    a = edit_dataset(pd.DataFrame({"code": codes}), "variable_renaming", 0, BASE)
    b = edit_dataset(codes, "variable_renaming", 0, BASE)
    assert list(a) == list(b) and len(a) == 20
