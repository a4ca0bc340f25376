import random
from collections import Counter

import pytest

from tinytrace.data import Pipeline
from tinytrace.lang import tokenizer as tk
from tinytrace.lang.config import PRESETS


def test_vocabulary_has_77_unique_tokens():
    assert len(tk.VOCAB) == 77 == tk.vocab_size()
    assert len(set(tk.VOCAB)) == 77
    for lexeme in ["if", "elif", "else", "while", "+", "-", "*", "//", "%", "<", ">", "<=",
                   ">=", "==", "!=", "=", ":", "@", "$", "^", "?", ";", "\t", "\n",
                   "\n#STEP\n", "\n\n"]:
        assert lexeme in tk.STOI, lexeme
    assert all(c in tk.STOI for c in "abcdefghijklmnopqrstuvwxyz0123456789")


def test_atomic_tokens():
    assert tk.encode("if") == [tk.STOI["if"]]
    assert tk.encode("a = -37") == [tk.STOI["a"], tk.STOI["="], tk.STOI["-"], tk.STOI["3"], tk.STOI["7"]]
    assert tk.encode("x\n#STEP\n@x = 1$") [1] == tk.STEP_ID
    assert tk.encode("a?1\n\n")[-1] == tk.EOS_ID
    assert tk.decode(tk.encode("b = a - -5")) == "b = a - -5"
    assert tk.decode(tk.encode("if -5 < a:")) == "if -5 < a:"
    assert tk.decode(tk.encode("@\tb = 3$a?-5;b?12")) == "@\tb = 3$a?-5;b?12"


def test_unknown_character_names_it_and_its_position():
    with pytest.raises(tk.TokenizerError, match=r"'A' at position 4 \(line 1\)"):
        tk.encode("a = A")
    with pytest.raises(tk.TokenizerError, match="line 2"):
        tk.encode("a = 1\nb = 'x'")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_round_trip_on_generated_examples(preset):
    pipe = Pipeline(PRESETS[preset])
    rng = random.Random(1)
    stats = Counter()
    n = 0
    while n < 300:
        r = pipe.sample(rng, stats)
        if r is None:
            continue
        n += 1
        text = r["trace"] + "\n\n"
        ids = tk.encode(text)
        assert bytes(ids) == r["tokens"]  # the fast assembly equals the reference encoder
        assert tk.decode(ids) == text
        assert bytes(tk.encode(r["code"])) == tk.encode_canonical(r["code"])


def test_lang_imports_only_the_standard_library():
    """``tinytrace.lang`` is the language alone: every import in it, inside functions too, is
    the standard library, another ``lang`` module or ``tinytrace.presets``."""
    import ast
    import sys
    from pathlib import Path

    import tinytrace.lang

    for path in Path(tinytrace.lang.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name == "tinytrace.presets", (path.name, name)
