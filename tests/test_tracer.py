import multiprocessing as mp
import random

import pytest

from tinytrace.lang import tokenizer as tk
from tinytrace.lang.config import PRESETS
from tinytrace.lang.fast import default_fast_path
from tinytrace.lang.generator import Generator
from tinytrace.lang.program import Line, UnsupportedCode, operand_pairs, parse, render
from tinytrace.lang.tracer import (
    Rejected,
    format_example,
    make_example,
    max_step_pair_tokens,
    run,
    run_settrace,
    state_text,
    trace,
)

ISSUE_EXAMPLE = """a = 5
if a < 3:
\tb = a + 1
c = a - 2
#STEP
@a = 5$
if a < 3:
\tb = a + 1
c = a - 2
#STEP
a = 5
@if a < 3:$a?5
\tb = a + 1
c = a - 2
#STEP
a = 5
if a < 3:
\tb = a + 1
@c = a - 2$a?5
#STEP
a = 5
if a < 3:
\tb = a + 1
c = a - 2
@^$a?5;c?3"""


def test_format_is_the_authors():
    assert trace("a = 5\nif a < 3:\n\tb = a + 1\nc = a - 2") == ISSUE_EXAMPLE
    lines = parse("a = 5\nif a < 3:\n\tb = a + 1\nc = a - 2")
    assert make_example(lines, run(lines)).text == ISSUE_EXAMPLE


def test_state_order_is_first_assignment_at_run_time():
    code = "b = 1\nif b > 0:\n\tz = 2\na = 3\nz = 4\nb = 5"
    out = trace(code)
    assert out.endswith("@^$b?5;z?4;a?3")
    assert out == format_example(parse(code), run_settrace(code))


def _fused_mismatch(lines: list[Line], traced: tuple, ex, reason) -> str | None:
    """How the fast path's execution while writing (``run=True``) differs from :func:`run`
    (``ex``, or the rejection ``reason``) on the same snippet, or None."""
    rows, steps, final, why, pairs, executed, depth = traced
    if rows != [ln.row() for ln in lines]:
        return "fused rows differ"
    if why != reason:
        return f"fused reason {why}, run {reason}"
    if reason is None:
        if steps != [(i, state_text(s)) for i, s in ex.steps] or final != state_text(ex.final):
            return "fused steps differ"
        if (pairs, executed) != (operand_pairs(lines), operand_pairs(lines, {i for i, _ in ex.steps})):
            return "fused operand pairs differ"
        if depth != max(ln.indent for ln in lines):
            return "fused depth differs"
    return None


def _compare(args):
    """Trace `n` snippets of a preset with both tracers; return (accepted, first mismatch)."""
    preset, seed, n = args
    cfg = PRESETS[preset]
    gen = Generator(cfg)
    # the pipeline's path for the default rules: executed while written, on the same draws
    fused, rng_fused = default_fast_path(cfg, run=True), random.Random(seed)
    rng = random.Random(seed)
    vr, cap = cfg.value_range, cfg.max_loop_iterations
    accepted = 0
    for _ in range(n):
        lines = gen.generate(rng)
        code = render(lines)
        traced = fused(rng_fused) if fused else None
        try:
            ex = run(lines, vr, cap)
            fast = format_example(lines, ex)
        except Rejected as r:
            try:
                run_settrace(code, vr, cap)
                return accepted, ("fast rejected, settrace accepted", code)
            except Rejected as ref:
                if ref.reason != r.reason:
                    return accepted, (f"reasons differ {r.reason} {ref.reason}", code)
            if traced and (bad := _fused_mismatch(lines, traced, None, r.reason)):
                return accepted, (bad, code)
            continue
        accepted += 1
        if fast != format_example(lines, run_settrace(code, vr, cap)):
            return accepted, ("traces differ", code)
        e = make_example(lines, ex)
        if e.text != fast or e.tokens != bytes(tk.encode(fast + "\n\n")):
            return accepted, ("make_example differs from format_example", code)
        # parts: the snippet, then blocks each opened by `#STEP`, the last ending with EOS
        bounds = [i for i, t in enumerate(e.tokens) if t == tk.STEP_ID] + [len(e.tokens)]
        if e.part_lengths != [bounds[0]] + [b - a for a, b in zip(bounds, bounds[1:])]:
            return accepted, ("part lengths", code)
        if traced and (bad := _fused_mismatch(lines, traced, ex, None)):
            return accepted, (bad, code)
    return accepted, None


# >= 10,000 snippets of every preset, rejected ones included (their reasons must agree),
# split over two processes (spawned: forking the test process, whose torch threads may hold
# locks, can deadlock the child)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fast_tracer_equals_settrace(preset):
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_compare, [(preset, 2 * i + len(preset), 5_000) for i in range(2)])
    for accepted, mismatch in results:
        assert mismatch is None, mismatch
    assert sum(a for a, _ in results) > 1000


def test_control_flow_events():
    # no line event for `else:`, one per loop test, elif tested only when reached
    code = "a = 1\nif a > 5:\n\tb = 1\nelif a > 0:\n\tb = 2\nelse:\n\tb = 3\nc = 0\nwhile c < 2:\n\tc = c + 1"
    lines = parse(code)
    ex = run(lines)
    assert [i for i, _ in ex.steps] == [0, 1, 3, 4, 7, 8, 9, 8, 9, 8]
    assert ex.final == (("a", 1), ("b", 2), ("c", 2))
    assert format_example(lines, ex) == format_example(lines, run_settrace(code))
    code2 = "a = 9\nif a < 5:\n\tb = 1\nelse:\n\tb = 3"
    assert [i for i, _ in run(parse(code2)).steps] == [0, 1, 4]


def test_runtime_filters():
    with pytest.raises(Rejected, match="value_range"):
        run(parse("a = 90\nb = a + 20"))
    with pytest.raises(Rejected, match="exception"):
        run(parse("a = b + 1"))
    with pytest.raises(Rejected, match="exception"):
        run(parse("a = 0\nb = 5 // a"))
    with pytest.raises(Rejected, match="loop_cap"):
        run(parse("a = 0\nwhile a < 50:\n\ta = a + 1"), max_loop_iterations=10)
    with pytest.raises(Rejected, match="loop_cap"):
        run_settrace("a = 0\nwhile a < 5:\n\tb = 1", max_loop_iterations=10)
    # a read before assignment is fine when that line never runs
    assert run(parse("a = 1\nif a > 5:\n\tc = z + 1"))


def _zero_division(f) -> str:
    """Python's own words for a division by zero (they change between versions)."""
    try:
        f()
    except ZeroDivisionError as e:
        return f"ZeroDivisionError: {e}"
    raise AssertionError("no ZeroDivisionError")


@pytest.mark.parametrize("code, cause", [
    ("a = b + 1", "NameError: name 'b' is not defined"),
    ("a = 1\nif a > 0:\n\tc = z - a", "NameError: name 'z' is not defined"),
    ("a = 0\nb = 5 // a", _zero_division(lambda: 5 // 0)),
    ("a = 0\nb = 5 % a", _zero_division(lambda: 5 % 0)),
])
def test_an_exception_rejection_names_its_cause_in_both_tracers(code, cause):
    causes = []
    for tracer in (lambda: run(parse(code)), lambda: run_settrace(code)):
        with pytest.raises(Rejected) as r:
            tracer()
        assert r.value.reason == "exception" and str(r.value) == "exception"
        causes.append(r.value.cause)
    assert causes == [cause, cause]


@pytest.mark.parametrize(
    "code, match",
    [
        ("import os", "Import"),
        ("a = len(b)", "unsupported expression"),
        ("a.b = 1", "assignments"),
        ("ab = 1", "single letters"),
        ("a = 'x'", "unsupported expression"),
        ("a = 1.5", "unsupported expression"),
        ("def f():\n\treturn 1", "FunctionDef"),
        ("if a < b < c:\n\td = 1", "condition"),
        ("a = 1; b = 2", "one statement per line"),
        ("if a < 1:\n    b = 2", "tab"),
        ("a = (", "syntax error"),
        ("", "empty"),
        # the trace copies the snippet: what its copy would drop is refused, not dropped
        ("a = 5 # hi", "line 1: write 'a = 5 # hi' as 'a = 5'"),
        ("a = 5\nb = (a)", "line 2: write 'b = \\(a\\)' as 'b = a'"),
        ("a = 5\nif a<3:\n\tb = 1", "line 2: write 'if a<3:' as 'if a < 3:'"),
    ],
)
def test_parse_rejects_code_outside_the_language(code, match):
    with pytest.raises(UnsupportedCode, match=match):
        parse(code)


def test_step_pair_length():
    """The determinism filter's span, read off the token sequence itself: from the #STEP that
    opens a block to the last token of the next block (its #STEP excluded, the end-of-example
    token included), the longest over consecutive blocks."""
    lines = parse("a = 1\nif a > 0:\n\tb = a + 10\nc = 2")
    e = make_example(lines, run(lines))
    assert sum(e.part_lengths) == len(e.tokens)
    starts = [i for i, t in enumerate(e.tokens) if t == tk.STEP_ID]
    ends = starts[1:] + [len(e.tokens)]
    assert len(starts) == 5  # four executed lines and the final state
    spans = [ends[k + 1] - starts[k] for k in range(len(starts) - 1)]
    assert max_step_pair_tokens(e.part_lengths) == max(spans)
    assert len(set(spans)) > 1  # the blocks differ in length: the maximum is not any pair's


def test_deep_nesting_is_formatted():
    # indentation is not capped: 70 nested `if`s trace like the plain formatter says
    code = "a = 1\n" + "".join("\t" * k + f"if a > {k - 100}:\n" for k in range(70)) + "\t" * 70 + "b = 1"
    lines = parse(code)
    ex = run(lines)
    assert trace(code) == format_example(lines, ex) == make_example(lines, ex).text
    assert ex.final == (("a", 1), ("b", 1))
