"""Fixed 77-token vocabulary of the TinyTracing format (paper Sec. 3.1, App. C.2).

Every lexeme is one token: identifiers a-z, each decimal digit, the minus sign, keywords
(`if` is a single token), operators, punctuation, the trace markers `@ $ ^ ? ;`, tab and
newline. Two multi-character tokens carry the trace structure: ``"\\n#STEP\\n"`` (the line
break, ``#STEP`` and line break that open a step) and ``"\\n\\n"`` (the blank line that ends an
example: the end-of-example token). Spaces are not tokens: text is canonically spaced, so
``decode(encode(x)) == x`` for every generated example.

The vocabulary covers the whole language of App. B; tokens the paper's experiments never
emit (``* // % <= ...``, brackets, ``for in and or not print``) are reserved, as in C.2.
"""
from __future__ import annotations

import re
from typing import Iterable

PAD, EOS, STEP, NEWLINE, TAB = "<pad>", "\n\n", "\n#STEP\n", "\n", "\t"
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
DIGITS = [str(d) for d in range(10)]
KEYWORDS = ["if", "elif", "else", "while"]
ARITH_OPS = ["+", "-", "*", "//", "%"]
COMPARISONS = ["<", ">", "<=", ">=", "==", "!="]
PUNCT = ["=", ":", "(", ")", "[", "]", "{", "}", ",", "."]
MARKERS = ["@", "$", "^", "?", ";"]
RESERVED_WORDS = ["for", "in", "and", "or", "not", "print"]

VOCAB: list[str] = (
    [PAD, EOS, STEP, NEWLINE, TAB]
    + LETTERS + DIGITS + KEYWORDS + ARITH_OPS + COMPARISONS + PUNCT + MARKERS + RESERVED_WORDS
)
assert len(VOCAB) == 77 and len(set(VOCAB)) == 77, len(VOCAB)
STOI: dict[str, int] = {t: i for i, t in enumerate(VOCAB)}
PAD_ID, EOS_ID, STEP_ID, NEWLINE_ID, TAB_ID = (STOI[t] for t in (PAD, EOS, STEP, NEWLINE, TAB))

_WORDS = sorted(KEYWORDS + RESERVED_WORDS, key=len, reverse=True)
_SYMBOLS = sorted(
    ARITH_OPS + COMPARISONS + PUNCT + MARKERS, key=len, reverse=True
)
# Longest match first; a keyword never continues into a letter; anything else is an error.
_TOKEN_RE = re.compile(
    "(\n#STEP\n|\n\n|\n|\t)"
    "|((?:" + "|".join(_WORDS) + ")(?![a-z]))"
    "|([a-z0-9])"
    "|(" + "|".join(re.escape(s) for s in _SYMBOLS) + ")"
    "|( )"
    "|(.)",
    re.S,
)

_STRUCTURAL = {PAD, EOS, STEP, NEWLINE, TAB, "@", "$", "^"}
_NO_SPACE_BEFORE = {":", ")", "]", "}", ",", "."}
_NO_SPACE_AFTER = {"(", "[", "{", "."}
# A minus sign after one of these (or at line start) is a sign, glued to its number.
_OPERAND_END = set(LETTERS) | set(DIGITS) | {")", "]", "}"}


class TokenizerError(ValueError):
    """Raised for text the vocabulary cannot express."""


def encode(text: str) -> list[int]:
    """Text -> token ids. Spaces are dropped; an unknown character raises, naming it."""
    ids = []
    append = ids.append
    for m in _TOKEN_RE.finditer(text):
        if m.lastindex == 5:
            continue
        if m.lastindex == 6:
            raise TokenizerError(
                f"unknown character {m.group(6)!r} at position {m.start()} "
                f"(line {text.count(chr(10), 0, m.start()) + 1})"
            )
        append(STOI[m.group(m.lastindex)])
    return ids


def decode(ids: Iterable[int]) -> str:
    """Token ids -> canonically spaced text (inverse of :func:`encode` on generated text)."""
    out: list[str] = []
    prev = None  # previous non-structural token on the current line
    unary = False  # whether `prev` is a sign (glued to the following digits)
    in_state = False  # after `$`: the state list has no spaces
    for i in ids:
        tok = VOCAB[i]
        if tok == PAD:
            continue
        if tok in (NEWLINE, STEP, EOS):
            out.append(tok)
            prev, unary, in_state = None, False, False
            continue
        if tok == "$":
            in_state = True
        if tok in _STRUCTURAL:
            out.append(tok)
            continue
        if (
            prev is not None
            and not in_state
            and tok not in _NO_SPACE_BEFORE
            and prev not in _NO_SPACE_AFTER
            and not (prev in DIGITS and tok in DIGITS)
            and not unary
        ):
            out.append(" ")
        unary = tok == "-" and (prev is None or prev not in _OPERAND_END)
        prev = tok
        out.append(tok)
    return "".join(out)


# --- fast paths used by the corpus builder ---------------------------------------------------
NEWLINE_BYTE = bytes([NEWLINE_ID])
# multi-character lexemes of generated examples, longest first (`elif` before `if`, `<=` before `<`)
_MULTI = sorted([w for w in [STEP] + KEYWORDS + ARITH_OPS + COMPARISONS if len(w) > 1], key=len,
                reverse=True)
_PLACEHOLDER = {w: chr(0x80 + i) for i, w in enumerate(_MULTI)}
_PLACEHOLDER[EOS] = chr(0x80 + len(_MULTI))  # packed text only: joins packed examples
_TABLE = bytearray(range(256))
for _c in VOCAB:
    if len(_c) == 1:
        _TABLE[ord(_c)] = STOI[_c]
for _w, _ph in _PLACEHOLDER.items():
    _TABLE[ord(_ph)] = STOI[_w]
_TABLE = bytes(_TABLE)


def encode_canonical(code: str) -> bytes:
    """Token ids (as bytes) of generated snippet or example text (the blank line that ends an
    example excluded), without the regex. Valid for text made of the generator's lexemes and
    the trace markers (no reserved words, no blank line), where letters never touch except
    inside keywords; equal to ``bytes(encode(code))`` there (tested). Use :func:`encode`
    for arbitrary text."""
    for w in _MULTI:
        if w in code:
            code = code.replace(w, _PLACEHOLDER[w])
    return packed_tokens(code)


# Packed text: generated text with each multi-character lexeme written as one placeholder
# character, so one character is one token (or a space). The corpus builder assembles an
# example in packed form; its tokens and its text then follow in one C-level pass each.
PACKED: dict[str, str] = {w: _PLACEHOLDER.get(w, w) for w in VOCAB if w != PAD}


def packed_tokens(packed: str) -> bytes:
    return packed.encode("latin-1").translate(_TABLE, b" ")


def unpack(packed: str, lexemes: Iterable[str] = _MULTI) -> str:
    """The text of packed text that holds no multi-character lexeme outside ``lexemes``."""
    for w in lexemes:
        packed = packed.replace(_PLACEHOLDER[w], w)
    return packed


def packed_lexemes(packed: str) -> list[str]:
    """The multi-character lexemes present in (short) packed text."""
    return [w for w in _MULTI if _PLACEHOLDER[w] in packed]


# --- fast path used by the corpus builder: tokens of structured pieces, cached -------------
_INT_CACHE: dict[int, list[int]] = {}


def int_tokens(v: int) -> list[int]:
    """Tokens of an integer literal or value: optional minus sign, then one token per digit."""
    t = _INT_CACHE.get(v)
    if t is None:
        t = [STOI[c] for c in str(v)]
        if -1000 < v < 1000:
            _INT_CACHE[v] = t
    return t


def operand_tokens(x) -> list[int]:
    return [STOI[x]] if isinstance(x, str) else int_tokens(x)


def vocab_size() -> int:
    return len(VOCAB)
