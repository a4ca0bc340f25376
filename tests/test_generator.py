import multiprocessing as mp
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytrace.data import Pipeline
from tinytrace.lang.config import (
    PRESETS,
    GeneratorConfig,
    all_pairs,
    get_preset,
    sample_pairs,
)
from tinytrace.lang.generator import (
    ASSIGNMENT,
    END,
    IF_STATEMENT,
    UNINDENT,
    WHILE_LOOP,
    DefaultRules,
    Generator,
)
from tinytrace.lang.program import (
    ASSIGN,
    IF,
    WHILE,
    Line,
    cooccurring_pairs,
    max_depth,
    n_statements,
    operand_pairs,
    parse,
    render,
)
from tinytrace.lang.tracer import format_example, run, run_settrace

EXPECTED = {
    "base": (5, 10, 0, 2),
    "longer": (11, 17, 0, 2),
    "deeper": (5, 10, 3, 4),
    "depth-0-5": (5, 15, 0, 5),
    **{f"depth-{n}": (5, 15, n, n) for n in range(6, 10)},
}


def test_counting_definitions():
    lines = parse("a = 1\nif a < 2:\n\tif a > 0:\n\t\tb = 2\nc = 3")
    assert n_statements(lines) == 5  # `if` headers count as statements
    assert max_depth(lines) == 2  # an `if` inside an `if` has depth 2 (App. F)
    assert max_depth(parse("a = 1\nb = a + 1")) == 0


@pytest.mark.parametrize("preset", sorted(EXPECTED))
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_preset_constraints(preset, seed):
    cfg = PRESETS[preset]
    lo_s, hi_s, lo_d, hi_d = EXPECTED[preset]
    lines = Generator(cfg).generate(random.Random(seed))
    assert lo_s <= n_statements(lines) <= hi_s
    assert lo_d <= max_depth(lines) <= hi_d
    ops = {ln.op for ln in lines if ln.kind == ASSIGN and ln.op}
    assert len(ops) <= 1 and ops <= {"+", "-"}  # one arithmetic operator per snippet
    assert {ln.op for ln in lines if ln.kind == IF} <= {"<", ">"}
    assert {ln.kind for ln in lines} <= {ASSIGN, IF}
    for ln in lines:
        for x in (ln.a, ln.b):
            if isinstance(x, int):
                assert -99 <= x <= 99
        assert all(v in "abcdefghijklmnopqrstuvwxyz" and len(v) == 1 for v in ln.variables())
    ifs = Counter(ln.indent for ln in lines if ln.kind == IF)
    assert all(n <= 2 for n in ifs.values())  # at most two `if` per nesting level
    # no empty block: every `if` is followed by a deeper line
    for i, ln in enumerate(lines):
        if ln.kind == IF:
            assert i + 1 < len(lines) and lines[i + 1].indent == ln.indent + 1
    assert parse(render(lines)) == lines


def test_seed_determinism():
    gen = Generator(PRESETS["base"])
    a = [render(gen.generate(random.Random(7))) for _ in range(3)]
    b = [render(gen.generate(random.Random(7))) for _ in range(3)]
    assert a == b


def test_defaults_match_the_authors_distribution():
    """Rough frequencies of the instantiation rules (RHS literal/variable/binary 15/15/70)."""
    gen = Generator(PRESETS["base"])
    rng = random.Random(0)
    kinds = Counter()
    for _ in range(3000):
        for ln in gen.generate(rng):
            if ln.kind == ASSIGN:
                kinds["binary" if ln.op else ("literal" if isinstance(ln.a, int) else "var")] += 1
    total = sum(kinds.values())
    assert abs(kinds["binary"] / total - 0.70) < 0.03
    assert abs((kinds["literal"] + kinds["var"]) / total - 0.30) < 0.03


class Fig10Rules:
    """The App. B, Fig. 10 example: an `if` block then an assignment; inside the `if`,
    a `while` block then an assignment (30%) or two assignments (70%); nothing else inside
    the `while`. Low-level rules of Table 1: variables a-c, constants 0-9."""

    def high_level(self, g):
        gid = g.top.gid
        if gid.get("planned"):
            return [UNINDENT]
        gid["planned"] = True
        if gid["type"] == "root":
            return [IF_STATEMENT, ASSIGNMENT, END]
        if gid["type"] == "if":
            if g.rng.random() < 0.3:
                return [WHILE_LOOP, ASSIGNMENT, UNINDENT]
            return [ASSIGNMENT, ASSIGNMENT, UNINDENT]
        return [UNINDENT]  # the while body holds only its update line

    def low_level(self, g, keyword):
        r = g.rng
        if keyword == ASSIGNMENT:
            g.emit(Line(ASSIGN, 0, r.choice("abc"), r.randint(0, 9)))
        elif keyword == IF_STATEMENT:
            g.emit(Line(IF, 0, None, r.randint(0, 9), "<", r.randint(0, 9)))
            g.push(type="if")
        elif keyword == WHILE_LOOP:
            g.emit(Line(ASSIGN, 0, "c", 0))
            g.emit(Line(WHILE, 0, None, "c", "<", r.randint(0, 9)))
            g.push(type="while")
            g.emit(Line(ASSIGN, 0, "c", "c", "+", 1))


def test_custom_rules_fig10_with_while():
    gen = Generator(rules=Fig10Rules())
    rng = random.Random(0)
    shapes = Counter()
    for _ in range(300):
        lines = gen.generate(rng)
        code = render(lines)
        assert lines[0].kind == IF and lines[-1].kind == ASSIGN and lines[-1].indent == 0
        if any(ln.kind == WHILE for ln in lines):
            shapes["while"] += 1
            assert [ln.indent for ln in lines] == [0, 1, 1, 2, 1, 0]
            assert code.split("\n")[2].startswith("\twhile c < ") and lines[3].text() == "c = c + 1"
        else:
            shapes["plain"] += 1
            assert [ln.indent for ln in lines] == [0, 1, 1, 0]
        ex = run(lines, (-99, 99), 100)
        assert format_example(lines, ex) == format_example(lines, run_settrace(code, (-99, 99), 100))
    assert 0.2 < shapes["while"] / 300 < 0.4


class BatchRules(Fig10Rules):
    """Several keywords at once, closing the block midway: `if`, then in its body an assignment,
    the close, and two assignments after the block."""

    def high_level(self, g):
        return [IF_STATEMENT] if len(g.stack) == 1 else [ASSIGNMENT, UNINDENT, ASSIGNMENT, ASSIGNMENT, END]


def test_keywords_queued_after_a_close_go_to_the_parent_context():
    lines = Generator(rules=BatchRules()).generate(random.Random(0))
    assert [(ln.kind, ln.indent) for ln in lines] == [(IF, 0), (ASSIGN, 1), (ASSIGN, 0), (ASSIGN, 0)]


def test_pair_exclusion_assignment_scope():
    forbidden = sample_pairs(90, seed=3)
    assert len(forbidden) == int(351 * 0.9) and len(all_pairs()) == 351
    cfg = get_preset("base", forbidden_pairs=forbidden)
    gen = Generator(cfg)
    rng = random.Random(0)
    fs = set(forbidden)
    seen_cooccurring = False
    for _ in range(2000):
        lines = gen.generate(rng)
        assert not fs & set(operand_pairs(lines))
        seen_cooccurring |= bool(fs & set(cooccurring_pairs(lines)))
    assert seen_cooccurring  # assignment scope still lets pairs meet elsewhere (Fig. 5 case 2)


@pytest.mark.parametrize("preset, pct", [("base", 60), ("full", 60), ("full", 100)])
def test_pair_exclusion_global_scope(preset, pct):
    """No forbidden pair in any statement: with `full`, not in a `while` loop's `c = c + 1`
    either (a loop whose every variable's self-pair is forbidden is not written)."""
    forbidden = set(sample_pairs(pct, seed=4))
    cfg = get_preset(preset, forbidden_pairs=tuple(forbidden), exclusion_scope="global")
    gen = Generator(cfg)
    rng = random.Random(0)
    kinds = Counter()
    for _ in range(2000):
        lines = gen.generate(rng)
        assert not forbidden & set(cooccurring_pairs(lines))
        kinds.update(ln.kind for ln in lines)
    assert (kinds[WHILE] > 0) == (preset == "full" and pct < 100)


def test_full_exclusion_removes_variable_pairs():
    cfg = get_preset("base", forbidden_pairs=tuple(all_pairs()))
    gen = Generator(cfg)
    rng = random.Random(0)
    assert all(not operand_pairs(gen.generate(rng)) for _ in range(500))


def test_required_forbidden_pair_is_executed():
    forbidden = sample_pairs(20, seed=5)
    cfg = get_preset("base", forbidden_pairs=forbidden, require_forbidden_pair=True)
    pipe = Pipeline(cfg)
    rng = random.Random(0)
    stats = Counter()
    got = 0
    while got < 200:
        r = pipe.sample(rng, stats)
        if r:
            got += 1
            assert set(r["executed_operand_pairs"]) & set(forbidden)
    assert stats["no_forbidden_pair"] > 0


def test_full_preset_emits_every_construct():
    gen = Generator(PRESETS["full"])
    rng = random.Random(0)
    kinds, ops = Counter(), Counter()
    for _ in range(2000):
        for ln in gen.generate(rng):
            kinds[ln.kind] += 1
            ops[ln.op] += 1
    assert {"assign", "if", "elif", "else", "while"} <= set(kinds)
    assert {"+", "-", "*", "//", "%", "<", ">", "<=", ">=", "==", "!="} <= set(ops)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(min_statements=8, max_statements=4), "statement range"),
        (dict(min_depth=3, max_depth=2), "depth range"),
        (dict(variables="aB"), "letters"),
        (dict(arith_ops=("^",)), "arithmetic operator"),
        (dict(value_range=(5, -5)), "value range"),
        (dict(p_rhs_literal=0.8, p_rhs_variable=0.5), "exceeds 1"),
        (dict(exclusion_scope="everywhere"), "exclusion_scope"),
        (dict(forbidden_pairs=("a1",)), "pair"),
        (dict(require_forbidden_pair=True), "forbidden_pairs"),
        (dict(move_weights={"jump": 1}), "move weights"),
    ],
)
def test_bad_configs_raise_clear_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**changes)
    with pytest.raises(ValueError, match="unknown generator preset"):
        get_preset("nope")


FAST_CONFIGS = {  # the configs with a fast path (`full` has move weights: it has none)
    **{name: PRESETS[name] for name in sorted(PRESETS) if not PRESETS[name].move_weights},
    "pairs-assignment": get_preset("base", forbidden_pairs=sample_pairs(90, seed=3)),
    "pairs-global": get_preset("base", forbidden_pairs=sample_pairs(60, seed=4),
                               exclusion_scope="global"),
    "pairs-all": get_preset("base", forbidden_pairs=tuple(all_pairs())),
    "requires-pair": get_preset("base", forbidden_pairs=sample_pairs(20, seed=5),
                                require_forbidden_pair=True),
}


def _fast_vs_pluggable(args):
    """`n` snippets from the default rules' fast path and from the context-stack generator
    running DefaultRules, from the same seed: (first difference or None, fast path used)."""
    name, seed, n = args
    cfg = FAST_CONFIGS[name]
    fast, ref = Generator(cfg), Generator(cfg, rules=DefaultRules(cfg))
    r1, r2 = random.Random(seed), random.Random(seed)
    s1, s2 = Counter(), Counter()
    for k in range(n):
        a, b = fast.generate(r1, stats=s1), ref.generate(r2, stats=s2)
        if a != b:
            return f"snippet {k} differs:\n{render(a)}\n---\n{render(b)}", fast.fast is not None
    if r1.getstate() != r2.getstate():
        return "random states differ after the run", fast.fast is not None
    if s1 != s2:
        return f"generator rejections differ {s1} {s2}", fast.fast is not None
    return None, fast.fast is not None


# >= 10,000 snippets of every preset (the deep presets reject ~99% of attempts, so this checks
# millions of generator runs), split over two spawned processes (see test_tracer.py)
@pytest.mark.parametrize("name", list(FAST_CONFIGS))
def test_fast_path_equals_pluggable_generator(name):
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_fast_vs_pluggable, [(name, 100 + i, 5_000) for i in range(2)])
    for mismatch, used in results:
        assert mismatch is None, mismatch
        assert used  # else the case would compare the context-stack generator with itself


def test_move_weights_take_the_context_stack_generator():
    assert Generator(PRESETS["full"]).fast is None and Generator(PRESETS["base"]).fast is not None
