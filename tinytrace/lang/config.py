"""Declarative generator configs and their named presets, in one place.

Presets (paper Sec. 3.2, 4.3, 4.3.1, App. F):

=============  ==========  =========  ===========================================
preset         statements  depth      note
=============  ==========  =========  ===========================================
``base``       5-10        0-2        the training distribution (Sec. 3.2)
``longer``     11-17       0-2        OOD length (Sec. 4.3)
``deeper``     5-10        3-4        OOD depth: max depth exactly 3 or 4 (Sec. 4.3)
``depth-0-5``  5-15        0-5        curriculum base (Sec. 4.3.1)
``depth-N``    5-15        N          max depth exactly N, N = 6..9 (App. F)
``full``       5-10        0-3        every construct the generator can emit
=============  ==========  =========  ===========================================

A *statement* is one line (an assignment or a block header); the *depth* is the deepest
indentation level (App. F: an ``if`` inside an ``if`` has depth 2). The paper does not state
the generator's probabilities; the defaults below are the authors' public generator's.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

from tinytrace.presets import ConfigDict, Presets

from .program import pair

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
ALL_ARITH = ("+", "-", "*", "//", "%")
ALL_COMPARISONS = ("<", ">", "<=", ">=", "==", "!=")
SCOPES = ("assignment", "global")


def all_pairs(alphabet: str = ALPHABET) -> list[str]:
    """The unordered variable pairs, with replacement: 26 * 27 / 2 = 351 for a-z (Sec. 4.2)."""
    return [u + v for u, v in combinations_with_replacement(sorted(alphabet), 2)]


@dataclass
class GeneratorConfig(ConfigDict):
    name: str = "base"
    # structure (Sec. 3.2)
    min_statements: int = 5
    max_statements: int = 10
    min_depth: int = 0  # the snippet's deepest level must lie in [min_depth, max_depth]
    max_depth: int = 2
    max_ifs_per_depth: int | None = 2  # `if` headers at one depth, over the whole snippet
    # vocabulary (Sec. 3.2)
    variables: str = ALPHABET
    arith_ops: tuple[str, ...] = ("+", "-")
    comparisons: tuple[str, ...] = ("<", ">")
    max_literal: int = 99  # literals: uniform magnitude in [0, max_literal], random sign
    # runtime filters (Sec. 2.2, 3.2)
    value_range: tuple[int, int] = (-99, 99)
    max_loop_iterations: int = 10
    # construct probabilities (the authors' public generator)
    p_reuse_target: float = 0.3
    p_rhs_literal: float = 0.15
    p_rhs_variable: float = 0.15  # the rest (0.7) is `x op y`
    p_operand_variable: float = 0.5
    one_op_per_snippet: bool = True
    # weights of skeleton moves: assign, if, while, elif, else, close, end (absent = 1 for
    # assign/if/close/end, 0 for while/elif/else); empty = uniform over the allowed moves
    move_weights: dict = field(default_factory=dict)
    while_span: int = 5  # a `while` runs at most this many iterations from its start value
    # variable-pair coverage (Sec. 4.2, 4.2.1)
    forbidden_pairs: tuple[str, ...] = ()  # unordered pairs as sorted 2-letter strings
    exclusion_scope: str = "assignment"  # never as `x = u op v` operands, or `global`
    require_forbidden_pair: bool = False  # test sets: an executed `x = u op v` uses one

    def __post_init__(self):
        self.arith_ops = tuple(self.arith_ops)
        self.comparisons = tuple(self.comparisons)
        self.value_range = tuple(self.value_range)
        self.forbidden_pairs = tuple(sorted({_norm_pair(p) for p in self.forbidden_pairs}))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with one clear sentence for a bad or contradictory setting."""
        def bad(msg):
            raise ValueError(f"generator config {self.name!r}: {msg}")

        if self.min_statements < 1:
            bad(f"min_statements must be >= 1, got {self.min_statements}")
        if self.max_statements < self.min_statements:
            bad(f"statement range {self.min_statements}-{self.max_statements} is empty")
        if self.min_depth < 0 or self.max_depth < self.min_depth:
            bad(f"depth range {self.min_depth}-{self.max_depth} is empty")
        if self.min_depth + 1 > self.max_statements:
            bad(f"depth {self.min_depth} needs more than {self.max_statements} statements")
        if not self.variables or any(v not in ALPHABET for v in self.variables):
            bad(f"variables must be letters a-z, got {self.variables!r}")
        if len(set(self.variables)) != len(self.variables):
            bad("variables contain duplicates")
        for op in self.arith_ops:
            if op not in ALL_ARITH:
                bad(f"unknown arithmetic operator {op!r}")
        for op in self.comparisons:
            if op not in ALL_COMPARISONS:
                bad(f"unknown comparison {op!r}")
        if not self.arith_ops or not self.comparisons:
            bad("needs at least one arithmetic operator and one comparison")
        lo, hi = self.value_range
        if lo > hi:
            bad(f"value range {self.value_range} is empty")
        if self.max_literal < 0:
            bad("max_literal must be >= 0")
        for p in ("p_reuse_target", "p_rhs_literal", "p_rhs_variable", "p_operand_variable"):
            if not 0.0 <= getattr(self, p) <= 1.0:
                bad(f"{p} must be a probability, got {getattr(self, p)}")
        if self.p_rhs_literal + self.p_rhs_variable > 1.0:
            bad("p_rhs_literal + p_rhs_variable exceeds 1")
        if self.max_loop_iterations < 0 or self.while_span < 1:
            bad("max_loop_iterations must be >= 0 and while_span >= 1")
        unknown = set(self.move_weights) - {"assign", "if", "while", "elif", "else", "close", "end"}
        if unknown:
            bad(f"unknown move weights {sorted(unknown)}")
        if self.exclusion_scope not in SCOPES:
            bad(f"exclusion_scope must be one of {SCOPES}, got {self.exclusion_scope!r}")
        valid = set(all_pairs(self.variables))
        for p in self.forbidden_pairs:
            if p not in valid:
                bad(f"forbidden pair {p!r} is not a pair of configured variables")
        if self.require_forbidden_pair and not self.forbidden_pairs:
            bad("require_forbidden_pair needs forbidden_pairs")

    def forbidden_pair_set(self) -> frozenset[str]:
        return frozenset(self.forbidden_pairs)

    def replace(self, **changes) -> "GeneratorConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _norm_pair(p) -> str:
    p = "".join(p)
    if len(p) != 2:
        raise ValueError(f"a variable pair is two letters, got {p!r}")
    return pair(p[0], p[1])


def sample_pairs(percent: float, seed: int = 0, alphabet: str = ALPHABET) -> tuple[str, ...]:
    """``percent`` % of the unordered pairs, drawn at random (10 % of 351 -> 35, Sec. 4.2)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"exclusion percentage must be in [0, 100], got {percent}")
    pairs = all_pairs(alphabet)
    k = int(len(pairs) * percent / 100)
    return tuple(sorted(random.Random(seed).sample(pairs, k)))


def _presets() -> dict[str, GeneratorConfig]:
    base = GeneratorConfig()
    p = {
        "base": base,
        "longer": base.replace(name="longer", min_statements=11, max_statements=17),
        "deeper": base.replace(name="deeper", min_depth=3, max_depth=4),
        "depth-0-5": base.replace(name="depth-0-5", max_statements=15, max_depth=5),
        "full": base.replace(
            name="full",
            arith_ops=ALL_ARITH,
            comparisons=ALL_COMPARISONS,
            one_op_per_snippet=False,
            max_depth=3,
            move_weights={"while": 1.0, "elif": 1.0, "else": 1.0},
        ),
    }
    for n in range(6, 10):
        p[f"depth-{n}"] = base.replace(
            name=f"depth-{n}", max_statements=15, min_depth=n, max_depth=n
        )
    return p


PRESETS: Presets[GeneratorConfig] = Presets("generator preset", _presets())


def get_preset(name: str, **overrides) -> GeneratorConfig:
    """A named preset, optionally with fields replaced. Unknown names raise ValueError."""
    return PRESETS.get(name, **overrides)
