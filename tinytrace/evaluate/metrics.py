"""Per-example metrics of a generated trace against the truth (paper Sec. 3.3, 2.2).

A trace counts as correct only if the generated text equals the ground truth character for
character, markers included (exact match). Finer views: where the first wrong token is (token,
step block, line), whether the final state (``@^$...``) matches, and, with teacher forcing
(:func:`.decode.teacher_forced`), the share of step blocks whose every token is predicted right
and the token accuracy on the state values (after ``$``).
"""
from __future__ import annotations

import numpy as np

from tinytrace.lang import tokenizer as tk

# the scores an evaluation reports (fractions in [0, 1]), in table order; METRICS adds the count
SCORES = ("exact_match", "step_em_tf", "final_state_match", "state_token_acc")
METRICS = ("exact_match", "n", "step_em_tf", "final_state_match", "state_token_acc")

AT, CARET, DOLLAR = tk.STOI["@"], tk.STOI["^"], tk.STOI["$"]
LINE_END = (tk.NEWLINE_ID, tk.STEP_ID, tk.EOS_ID)


def exact_match(pred: list[int], target: str) -> bool:
    """The generated tokens decode to the target text exactly."""
    return tk.decode(pred) == target


def final_state(ids: list[int]) -> list[int] | None:
    """Tokens of the last ``@^$<state>`` line (None when there is none)."""
    for i in range(len(ids) - 3, -1, -1):
        if ids[i] == AT and ids[i + 1] == CARET and ids[i + 2] == DOLLAR:
            j = i + 3
            while j < len(ids) and ids[j] not in LINE_END:
                j += 1
            return ids[i + 3: j]
    return None


def first_wrong(pred: list[int], target: list[int]) -> tuple[int, int, int] | None:
    """(token index, step block (1 = the first block after the prompt), line in that block)
    of the first difference, or None when equal."""
    k = next((i for i, (a, b) in enumerate(zip(pred, target)) if a != b), min(len(pred), len(target)))
    if k == len(pred) == len(target):
        return None
    before = target[:k]
    step = before.count(tk.STEP_ID) + 1
    last = max((i for i, t in enumerate(before) if t == tk.STEP_ID), default=-1)
    return k, step, before[last + 1:].count(tk.NEWLINE_ID)



def tf_metrics(target: list[int], pred: np.ndarray) -> dict:
    """Per-step blocks right / total and state tokens right / total for one example."""
    t = np.asarray(target)
    ok = pred == t
    ends = np.flatnonzero((t == tk.STEP_ID) | (t == tk.EOS_ID))  # each block ends at the next STEP/EOS
    blocks_ok, a = 0, 0
    for e in ends:
        blocks_ok += bool(ok[a: e + 1].all())
        a = e + 1
    in_state = np.zeros(len(t), dtype=bool)
    state = False
    for i, tok in enumerate(target):
        if tok in LINE_END:
            state = False
        elif state:
            in_state[i] = True
        elif tok == DOLLAR:
            state = True
    return {"blocks": len(ends), "blocks_ok": blocks_ok, "state_tokens": int(in_state.sum()),
            "state_ok": int((ok & in_state).sum())}


# per-example counts behind the scores: a subset's scores are these summed over its examples
COUNTS = ("correct", "final_state_match", "blocks", "blocks_ok", "state_tokens", "state_ok")


def scores(counts) -> dict:
    """The scores (and ``n``) of a set of examples from their per-example :data:`COUNTS` (a
    DataFrame or a dict of columns; the teacher-forced columns may be absent). Pooled, not
    averaged per example: per-step EM is blocks right over all blocks, state-token accuracy
    state tokens right over all state tokens."""
    col = {k: np.asarray(counts[k]) for k in COUNTS if k in counts}
    n = len(col["correct"])
    if not n:
        return {"n": 0}

    def ratio(num, den):
        return float(col[num].sum() / col[den].sum()) if den in col and col[den].sum() else None

    return {"exact_match": float(col["correct"].mean()), "n": n,
            "step_em_tf": ratio("blocks_ok", "blocks"),
            "final_state_match": float(col["final_state_match"].mean()),
            "state_token_acc": ratio("state_ok", "state_tokens")}
