"""From tidy experiment results to what the paper states: the selected models, the values
behind each reported key (:mod:`tinytrace.report.paper`) and the thresholds of its verdicts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

# thresholds that turn a curve into the paper's qualitative statements (Sec. 4.2, 4.3.1)
HIGH_EM = 0.8  # "accuracy remains above 80%"
COLLAPSE_EM = 0.2  # "accuracy collapses"


def select_sft(df):
    """Table 3's fine-tuned model: of the (data size x epochs) runs, the one with the lowest
    validation loss (App. G.1 keeps the best validation loss), else the best ID exact match."""
    ft = df[df["model"] == "fine-tuned"]
    if ft.empty:
        return df
    keys = ["data_size", "sft_epochs"]
    if "best_val_loss" in ft and ft["best_val_loss"].notna().any():
        best = ft.loc[ft["best_val_loss"].astype(float).idxmin(), keys]
    else:
        id_em = ft[ft["test_set"] == "id"].set_index(keys)["exact_match"]
        best = dict(zip(keys, id_em.idxmax()))
    chosen = (ft["data_size"] == best["data_size"]) & (ft["sft_epochs"] == best["sft_epochs"])
    return df[(df["model"] != "fine-tuned") | chosen]


def _em(df, **where) -> float:
    d = df
    for k, v in where.items():
        d = d[d[k] == v]
    v = d["exact_match"].dropna() if "exact_match" in d else []
    return float(v.mean()) if len(v) else math.nan


def _depth_tests(df) -> list[str]:
    """The OOD depth test sets of a curriculum run, shallowest first (``depth-6`` .. at paper
    scale, ``depth-3`` .. on the scaled-down task): the paper's 6, 7, 8, 9 in that order."""
    names = {t for t in df["test_set"].unique() if t.count("-") == 1 and t.startswith("depth-")}
    return sorted(names, key=lambda t: int(t.split("-")[1]))


def measured(experiment: str, df) -> dict:
    """Our value for each key the paper reports about ``experiment``
    (:mod:`tinytrace.report.paper`), computed from the tidy results; keys we cannot measure at
    this scale are left out."""
    out: dict = {}
    if experiment == "base":
        for ts in ("id", "longer", "deeper"):
            out[ts] = _em(df, test_set=ts)
        if "clip_rate" in df:
            v = df["clip_rate"].dropna()
            if len(v):
                out["deeper_clipping"] = f"clip rate {float(v.iloc[0]):.2f}"
    elif experiment == "id_robustness":
        corpora = (df.sort_values("corpus_snippets", ascending=False)["corpus"]
                   .drop_duplicates().tolist())
        if len(corpora) >= 2:
            c2 = df[(df["corpus"] == corpora[1]) & (df["epoch"] == df["epoch"].min())]
            out["corpus2_epoch1_base"] = _em(c2, edit="none")
            edited = c2[(c2["subset"] == "correct") & (c2["edit"] != "none")]
            out["corpus2_epoch1_edited"] = _em(edited)
        last = df[df["epoch"] == df["epoch"].max()]
        corr = last[last["subset"] == "correct"].dropna(subset=["exact_match"])
        if len(corr):
            worst = corr.groupby("corpus")["exact_match"].idxmin()
            drops = {c: corr.loc[i, "edit"] for c, i in worst.items()}
            small = corpora[2:] or corpora[-1:]
            out["neutral_assignment_drop"] = ("lowest edit on the smaller corpora: " + ", ".join(
                f"{c}: {drops[c]}" for c in small if c in drops))
        brittle = _brittleness(df)
        if len(brittle) >= 2:
            out["larger_corpora_less_brittle"] = ", ".join(
                f"{c}: {b:.3f}" for c, b in brittle.items())
        gap = _same_subset_gap(df)
        if gap is not None:  # Fig. 12 like for like: the edit's applicable snippets, unaltered
            out["full_test_matches"] = f"max |EM(edit) - EM(unaltered, same snippets)| = {gap:.3f}"
    elif experiment == "pair_coverage":
        allowed = df[df["test_set"] == "allowed"]["exact_match"].dropna()
        if len(allowed):
            out["allowed_stays_high"] = f"lowest allowed-pairs EM {float(allowed.min()):.3f}"
        for scope, key in (("assignment", "assignment_excluded_above_80_until"),
                           ("global", None)):
            ex = df[(df["scope"] == scope) & (df["test_set"] == "excluded")].sort_values("exclusion_pct")
            if ex.empty:
                continue
            pcts, ems = ex["exclusion_pct"].tolist(), ex["exact_match"].astype(float).tolist()
            if key:
                high = [p for p, e in zip(pcts, ems) if e > HIGH_EM]
                below = [p for p, e in zip(pcts, ems) if e <= HIGH_EM]
                out[key] = max((p for p in high if not below or p < min(below)), default=math.nan)
                out["assignment_decline_from"] = min(below, default=math.nan)
                out["assignment_collapse_at"] = min(
                    (p for p, e in zip(pcts, ems) if e < COLLAPSE_EM), default=math.nan)
            else:
                out["global_below_80_from"] = min((p for p, e in zip(pcts, ems) if e < HIGH_EM),
                                                  default=math.nan)
    elif experiment == "depth_curriculum":
        tests = _depth_tests(df)
        if len(tests) >= 4:
            d6, d7, d8, d9 = tests[:4]
            out["depth6_p0"] = _em(df, test_set=d6, p=df["p"].min())
            later = df[df["p"] >= 1]
            if len(later):
                out["depth67_p1"] = float(
                    later[later["test_set"].isin([d6, d7])].groupby("p")["exact_match"].min().min())
            out["depth8_best"] = float(df[df["test_set"] == d8]["exact_match"].max())
            out["depth9"] = f"best over p: {float(df[df['test_set'] == d9]['exact_match'].max()):.3f}"
    elif experiment == "sft_lora":
        d = select_sft(df)
        for model, k in (("pre-trained", "pretrained"), ("fine-tuned", "finetuned")):
            for ts in ("id", "deeper", "longer"):
                out[f"{k}_{ts}"] = _em(d, model=model, test_set=ts)
        tp = d[d["model"] == "fine-tuned"]["trainable_params"].dropna()
        if len(tp):
            out["trainable_params"] = int(tp.iloc[0])
    elif experiment == "pe_ablation":
        for pe in ("ape", "rpe", "rpb"):
            for ts in ("id", "longer", "deeper"):
                out[f"{pe}_{ts}"] = _em(df, model=pe, test_set=ts)
    else:
        raise ValueError(f"unknown experiment {experiment!r}")
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def train_hours(run_dir) -> float | None:
    """Wall-clock training time of a run, from the timestamps of its log (None if absent)."""
    try:
        recs = [json.loads(x) for x in Path(run_dir, "log.jsonl").read_text().splitlines() if x]
    except OSError:
        return None
    times = [r["time"] for r in recs if isinstance(r.get("time"), (int, float))]
    if len(times) >= 2:
        return (max(times) - min(times)) / 3600
    secs = [r.get("elapsed_s") for r in recs if isinstance(r.get("elapsed_s"), (int, float))]
    return max(secs) / 3600 if secs else None


# --- where the model fails (beyond the paper, which shows failures only by example) --------------
FAILURE_CLASSES = ("snippet copy", "@ line (control flow)", "indentation (depth)", "state value",
                   "final state", "length")


def classify_failure(prediction: str, target: str) -> str | None:
    """The kind of the first wrong character of a trace (None when the trace is right).

    The line holding it decides: an ``@^`` line is the final state; a differing number of
    leading tabs (after an ``@``) is indentation, the paper's "clipping" when a deeper line
    comes back at an ID depth; an ``@`` on one side only is the line about to run (control
    flow); after the line's ``$`` it is a state value; else a copy of the snippet. A
    prediction that stops early or runs on past a right trace is ``length``."""
    if prediction == target:
        return None
    i = next((k for k, (a, b) in enumerate(zip(prediction, target)) if a != b),
             min(len(prediction), len(target)))
    if i >= len(target) or i >= len(prediction):
        return "length"
    start = target.rfind("\n", 0, i) + 1
    t_line = target[start:].split("\n", 1)[0]
    p_line = prediction[start:].split("\n", 1)[0]
    if t_line.startswith("@^"):
        return "final state"
    t_mark, p_mark = t_line.startswith("@"), p_line.startswith("@")
    t_body, p_body = t_line.lstrip("@"), p_line.lstrip("@")
    tabs = lambda s: len(s) - len(s.lstrip("\t"))  # noqa: E731
    if tabs(t_body) != tabs(p_body):
        return "indentation (depth)"
    if t_mark != p_mark:
        return "@ line (control flow)"
    if "$" in t_line and i - start > t_line.index("$"):
        return "state value"
    return "snippet copy"


def failure_counts(predictions, targets) -> dict[str, int]:
    """How many traces fail at each :data:`FAILURE_CLASSES` kind (zeros included)."""
    counts = dict.fromkeys(FAILURE_CLASSES, 0)
    for p, t in zip(predictions, targets):
        kind = classify_failure(p, t)
        if kind:
            counts[kind] += 1
    return counts


# --- verdicts: is each of the paper's findings reproduced by these results? ----------------------
REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)
TRAINED_EM = 0.9  # a model whose own ID test is below this cannot show the OOD/coverage findings
NEAR = 0.05  # "near 100%" / "near 0%" / "matches": within this of the value


def _pc(v) -> str:
    return "n/a" if v is None or isinstance(v, float) and math.isnan(v) else f"{100 * v:.1f}%"


def _verdict(ok: bool, evidence: str) -> dict:
    return {"verdict": REPRODUCED if ok else NOT_REPRODUCED, "evidence": evidence}


def _nc(reason: str) -> dict:
    return {"verdict": NOT_COMPARABLE, "evidence": reason}


def _untrained(name: str, em: float) -> dict | None:
    """The not-comparable verdict when the model the finding needs is not trained enough."""
    if math.isnan(em):
        return _nc(f"{name} ID EM not measured")
    if em < TRAINED_EM:
        return _nc(f"{name} ID EM {_pc(em)} < {_pc(TRAINED_EM)}: the finding needs a trained model")
    return None


def bracket(pcts: list, ems: list, above: float) -> tuple | None:
    """Where an EM curve over the exclusion grid first drops to <= ``above``: ``(last grid point
    above, first point at or below)``; None for either side the grid does not reach. A
    threshold is read off a curve only where the grid brackets it."""
    below = [p for p, e in zip(pcts, ems) if e <= above]
    if not below:
        return (pcts[-1], None)
    first = min(below)
    higher = [p for p, e in zip(pcts, ems) if p < first]
    return (max(higher) if higher else None, first)


def verdicts(experiment: str, df, scale: str) -> dict[str, dict]:
    """A verdict (:data:`VERDICTS`) with its evidence for each finding the paper states about
    ``experiment`` (:mod:`tinytrace.report.paper`; setup numbers excluded).

    Rules: a finding about a trained model needs that model's own ID EM >= :data:`TRAINED_EM`,
    else it is not comparable; numbers that depend on the task's sizes (e.g. EM on the paper's
    11-17-statement longer set) are compared as numbers only at the ``paper`` scale and as the
    direction of the finding elsewhere; a threshold needs a grid of >= 3 points that brackets
    it."""
    from tinytrace.report import paper  # the paper's numbers (report imports experiments)

    exact = scale == "paper"
    out: dict[str, dict] = {}
    m = measured(experiment, df)
    value = {r.key: r.value for r in paper.REPORTED if r.experiment == experiment}

    def near(key, ours, tol=NEAR):
        return _verdict(abs(ours - value[key]) <= tol,
                        f"{_pc(ours)} vs the paper's {_pc(value[key])} (tolerance {_pc(tol)})")

    if experiment in ("base", "sft_lora"):
        pre = "pretrained_" if experiment == "sft_lora" else ""
        d = select_sft(df) if experiment == "sft_lora" else df
        base = d[d["model"] == "pre-trained"] if pre else d
        em = {ts: _em(base, test_set=ts) for ts in ("id", "longer", "deeper")}
        out[pre + "id"] = _verdict(em["id"] >= 1 - NEAR,
                                   f"ID EM {_pc(em['id'])}, the paper's 100% within {_pc(NEAR)}")
        gate = _untrained("base", em["id"])
        if exact:
            out[pre + "longer"] = gate or near(pre + "longer", em["longer"], 0.1)
        else:
            out[pre + "longer"] = gate or _verdict(
                0.05 <= em["longer"] <= em["id"] - 0.1,
                f"longer {_pc(em['longer'])} between 5% and ID - 10 points ({_pc(em['id'])}): "
                "partial generalization (the numbers depend on the task's lengths)")
        out[pre + "deeper"] = gate or _verdict(em["deeper"] <= NEAR, f"deeper {_pc(em['deeper'])}")
        if experiment == "base":
            rate = df["clip_rate"].dropna() if "clip_rate" in df else []
            out["deeper_clipping"] = gate or (
                _nc("no deeper failures to classify") if not len(rate) else
                _verdict(float(rate.iloc[0]) >= 0.5, f"clip rate {float(rate.iloc[0]):.2f} of the "
                         "failing deeper traces (reproduced from 0.5)"))
        else:
            ft = d[d["model"] == "fine-tuned"]
            f = {ts: _em(ft, test_set=ts) for ts in ("id", "longer", "deeper")}
            out["finetuned_id"] = gate or _verdict(
                abs(f["id"] - em["id"]) <= NEAR, f"fine-tuned {_pc(f['id'])} vs pre-trained {_pc(em['id'])}")
            out["finetuned_deeper"] = gate or _verdict(f["deeper"] <= NEAR, f"deeper {_pc(f['deeper'])}")
            out["finetuned_longer"] = gate or _verdict(
                abs(f["longer"] - em["longer"]) <= 0.1,
                f"longer {_pc(f['longer'])} vs pre-trained {_pc(em['longer'])}: no large OOD gain")
            tp = m.get("trainable_params")
            out["trainable_params"] = (
                _nc("LoRA not run") if tp is None else
                _verdict(abs(tp / value["trainable_params"] - 1) <= 0.1,
                         f"{tp:,} trainable parameters vs the paper's 2.2M (r=8 on the query, key, "
                         "value and output projections of the paper model gives 0.57M; r=32 "
                         "would give 2.26M)") if exact else
                _nc(f"{tp:,} on this scale's smaller model"))
    elif experiment == "id_robustness":
        base, edited = m.get("corpus2_epoch1_base"), m.get("corpus2_epoch1_edited")
        out["corpus2_epoch1_base"] = (
            _nc("fewer than 2 corpora") if base is None else near("corpus2_epoch1_base", base, 0.1)
            if exact else _nc(f"{_pc(base)}: an early-training number that depends on the corpus "
                              "sizes and schedule"))
        out["corpus2_epoch1_edited"] = (
            _nc("fewer than 2 corpora") if base is None else
            _nc("no correctly traced snippets at epoch 1 of the second corpus") if edited is None else
            _verdict(edited >= 0.8 and (base is None or edited > base),
                     f"edited sets on the correctly traced snippets {_pc(edited)} (base test "
                     f"{_pc(base)}): reproduced when >= 80% and above the base test"))
        drop = m.get("neutral_assignment_drop")
        out["neutral_assignment_drop"] = (
            _nc("no correctly traced snippets") if drop is None else
            _verdict(all(x.endswith("neutral_assignment") for x in drop.split(": ", 1)[1].split(", ")), drop))
        brittle = _brittleness(df)
        vals = list(brittle.values)
        out["larger_corpora_less_brittle"] = (
            _nc(f"{len(vals)} corpus: the finding needs 2") if len(vals) < 2 else
            _verdict(all(a <= b for a, b in zip(vals, vals[1:])) and vals[0] < vals[-1],
                     "1 - EM of the edits on the correctly traced snippets, last epoch, largest "
                     "corpus first: " + ", ".join(f"{c}: {_pc(b)}" for c, b in brittle.items())))
        gap = _same_subset_gap(df)
        out["full_test_matches"] = (
            _nc("no same-subset base EM in these results") if gap is None else
            _verdict(gap <= NEAR, f"max |EM(edit) - EM(unaltered, same snippets)| = {100 * gap:.1f} "
                     f"points over corpora and epochs (reproduced up to {100 * NEAR:.0f})"))
    elif experiment == "pair_coverage":
        out.update(_coverage_verdicts(df, value))
    elif experiment == "depth_curriculum":
        tests = _depth_tests(df)
        ids = [t for t in df["test_set"].unique() if t.startswith("depth-0-")]
        own = _em(df, test_set=ids[0], p=df["p"].min()) if ids else math.nan
        gate = _untrained("curriculum (p = 0)", own)
        if len(tests) < 4:
            gate = gate or _nc(f"{len(tests)} depth test sets; the finding needs 4")
        for key in ("depth6_p0", "depth67_p1", "depth8_best"):
            out[key] = gate or (near(key, m[key]) if exact else _verdict(
                m.get(key, math.nan) >= value[key] - 0.1,
                f"{_pc(m.get(key))} vs the paper's {_pc(value[key])} (reproduced from "
                f"{_pc(value[key] - 0.1)})"))
        if not gate:
            d8 = m["depth8_best"]
            d9 = float(df[df["test_set"] == tests[3]]["exact_match"].max())
            out["depth9"] = _verdict(d9 <= d8 - 0.2, f"best over p: {_pc(d9)} vs depth-8's {_pc(d8)}")
        else:
            out["depth9"] = gate
    elif experiment == "pe_ablation":
        em = {(pe, ts): _em(df, model=pe, test_set=ts) for pe in ("ape", "rpe", "rpb")
              for ts in ("id", "longer", "deeper")}
        gate = _untrained("APE", em[("ape", "id")])
        longer = {pe: em[(pe, "longer")] for pe in ("ape", "rpe", "rpb")}
        order = " > ".join(f"{pe.upper()} {_pc(v)}" for pe, v in
                           sorted(longer.items(), key=lambda kv: -kv[1]))
        for pe in ("ape", "rpe", "rpb"):
            if exact:
                for ts in ("id", "longer", "deeper"):
                    out[f"{pe}_{ts}"] = gate or near(f"{pe}_{ts}", em[(pe, ts)], 0.1)
                continue
            if pe == "rpe":
                out["rpe_id"] = gate or _verdict(
                    em[("rpe", "id")] < min(em[("ape", "id")], em[("rpb", "id")]) - 0.02,
                    f"RPE {_pc(em[('rpe', 'id')])} below APE {_pc(em[('ape', 'id')])} and RPB "
                    f"{_pc(em[('rpb', 'id')])}")
            else:
                out[f"{pe}_id"] = gate or _verdict(em[(pe, "id")] >= 1 - NEAR,
                                                   f"ID {_pc(em[(pe, 'id')])}")
            rank = {"ape": 0, "rpb": 1, "rpe": 2}[pe]  # the paper's order on longer
            ours = sorted(longer, key=lambda k: -longer[k]).index(pe)
            out[f"{pe}_longer"] = gate or _verdict(ours == rank, f"longer: {order} (paper: APE > RPB > RPE)")
            out[f"{pe}_deeper"] = gate or _verdict(em[(pe, "deeper")] <= NEAR, f"deeper {_pc(em[(pe, 'deeper')])}")
    else:
        raise ValueError(f"unknown experiment {experiment!r}")
    return {k: v for k, v in out.items() if k in value}


def _brittleness(df):
    """Per corpus (largest first): the mean share of correctly traced snippets an edit breaks
    (1 - EM on the ``correct`` subset) at the last epoch."""
    if "subset" not in df or df.empty:
        return pd.Series(dtype=float)
    last = df[(df["epoch"] == df["epoch"].max()) & (df["subset"] == "correct")
              & (df["edit"] != "none")].dropna(subset=["exact_match"])
    sizes = last.groupby("corpus")["corpus_snippets"].first().sort_values(ascending=False)
    return (1 - last.groupby("corpus")["exact_match"].mean()).reindex(sizes.index)


def _same_subset_gap(df) -> float | None:
    """The largest |EM(edited) - EM(unaltered)| on the same snippets (the edit's applicable
    subset, ``base_same_subset``) over corpora and epochs; None when not recorded."""
    if "base_same_subset" not in df:
        return None
    full = df[(df["subset"] == "full") & (df["edit"] != "none")].dropna(subset=["base_same_subset"])
    if full.empty:
        return None
    return float((full["exact_match"].astype(float) - full["base_same_subset"].astype(float)).abs().max())


def _coverage_verdicts(df, value: dict) -> dict[str, dict]:
    allowed = df[df["test_set"] == "allowed"]["exact_match"].dropna().astype(float)
    out = {"allowed_stays_high": _nc("not run") if allowed.empty else _verdict(
        allowed.min() >= HIGH_EM, f"lowest allowed-pairs EM {_pc(allowed.min())} over both scopes "
        f"and {df['exclusion_pct'].nunique()} exclusion points (high from {_pc(HIGH_EM)})")}
    for scope in ("assignment", "global"):
        d = df[df["scope"] == scope]
        ex = d[d["test_set"] == "excluded"].sort_values("exclusion_pct")
        keys = (["assignment_excluded_above_80_until", "assignment_decline_from",
                 "assignment_collapse_at"] if scope == "assignment" else ["global_below_80_from"])
        if ex.empty:
            out.update({k: _nc(f"{scope} scope not run") for k in keys})
            continue
        pcts, ems = ex["exclusion_pct"].tolist(), ex["exact_match"].astype(float).tolist()
        allowed = d[(d["test_set"] == "allowed") & (d["exclusion_pct"] == pcts[0])]["exact_match"]
        gate = _untrained(f"{scope} scope at {pcts[0]}% (allowed pairs)",
                          float(allowed.iloc[0]) if len(allowed) else math.nan)
        if len(pcts) < 3:
            gate = gate or _nc(f"the grid has {len(pcts)} points: no knee can be located")
        if gate:
            out.update({k: gate for k in keys})
            continue
        curve = ", ".join(f"{p}%: {_pc(e)}" for p, e in zip(pcts, ems))
        lo, hi = bracket(pcts, ems, HIGH_EM)
        if scope == "assignment":
            paper_until = value["assignment_excluded_above_80_until"]
            if hi is None or lo is None:
                where = "above 80% at every point" if hi is None else "at or below 80% from the first point"
                ok = hi is None and pcts[-1] >= paper_until  # stays high beyond the paper's knee
                out["assignment_excluded_above_80_until"] = (
                    _verdict(False, f"{where} ({curve})") if not ok else
                    _verdict(True, f"above 80% up to {pcts[-1]}% ({curve})"))
            else:
                out["assignment_excluded_above_80_until"] = _verdict(
                    lo <= paper_until < hi or lo >= paper_until,
                    f"above 80% up to {lo}%, at or below from {hi}% ({curve})")
            out["assignment_decline_from"] = (
                _verdict(False, f"above 80% at every point ({curve})") if hi is None else
                _nc(f"at or below 80% from the first point ({curve})") if lo is None else
                _verdict(lo < value["assignment_decline_from"] <= hi,
                         f"declines between {lo}% and {hi}% ({curve})"))
            clo, chi = bracket(pcts, ems, COLLAPSE_EM)
            out["assignment_collapse_at"] = (
                _verdict(False, f"no collapse below {_pc(COLLAPSE_EM)} on the grid ({curve})")
                if chi is None else
                _verdict(chi == value["assignment_collapse_at"], f"below {_pc(COLLAPSE_EM)} from {chi}% ({curve})"))
        else:
            paper_from = value["global_below_80_from"]
            if lo is None:
                out["global_below_80_from"] = _nc(f"already at or below 80% at the first grid point "
                                                  f"({curve}): the grid does not bracket the decline")
            elif hi is None:
                out["global_below_80_from"] = _verdict(False, f"above 80% at every point ({curve})")
            else:
                out["global_below_80_from"] = _verdict(lo < paper_from <= hi,
                                                       f"declines between {lo}% and {hi}% ({curve})")
    return out
