"""From tidy experiment results to what the paper states: the selected models, the values
behind each reported key (:mod:`tinytrace.report.paper`), the thresholds of the paper's
qualitative statements and the classification of failures; the verdicts are in
:mod:`tinytrace.report.verdicts`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

# thresholds that turn a curve into the paper's qualitative statements (Sec. 4.2, 4.3.1)
TRAINED_EM = 0.9  # a model whose own ID test is below this cannot show the OOD/coverage findings
HIGH_EM = 0.8  # "accuracy remains above 80%"
COLLAPSE_EM = 0.2  # "accuracy collapses"


def select_sft(df):
    """Table 3's fine-tuned model: of the (data size x epochs) runs, the one with the lowest
    validation loss (App. G.1 keeps the best validation loss), else the best ID exact match."""
    # results concatenated per run repeat their index: pick by value, then mask df itself
    ft = df[df["model"] == "fine-tuned"].reset_index(drop=True)
    if ft.empty:
        return df
    keys = ["data_size", "sft_epochs"]
    if "best_val_loss" in ft and ft["best_val_loss"].notna().any():
        best = ft.loc[ft["best_val_loss"].astype(float).idxmin(), keys]
    else:
        id_em = ft[ft["test_set"] == "id"].set_index(keys)["exact_match"].dropna()
        if id_em.empty:  # nothing to choose by: one run is Table 3's, of several none is
            return df if len(ft[keys].drop_duplicates()) == 1 else df[df["model"] != "fine-tuned"]
        best = dict(zip(keys, id_em.idxmax()))
    chosen = (df["data_size"] == best["data_size"]) & (df["sft_epochs"] == best["sft_epochs"])
    return df[(df["model"] != "fine-tuned") | chosen]


def mean_em(df, **where) -> float:
    d = df
    for k, v in where.items():
        d = d[d[k] == v]
    v = d["exact_match"].dropna() if "exact_match" in d else []
    return float(v.mean()) if len(v) else math.nan


def untrained_curriculum_runs(df) -> dict:
    """The curriculum runs (by p) whose own test (depths 0-X) is below :data:`TRAINED_EM`,
    with that EM: the findings about deeper snippets leave them out."""
    ids = [t for t in df["test_set"].unique() if t.startswith("depth-0-")]
    own = {p: mean_em(df, test_set=ids[0], p=p) for p in sorted(df["p"].unique())} if ids else {}
    return {p: em for p, em in own.items() if em < TRAINED_EM}


def trained_later_runs(df):
    """The rows of the curriculum runs with p >= 1 that are trained enough on their own test:
    what the findings about the injected and deeper depths read (depth 8 once depths 6-7 are
    trained, Sec. 4.3.1; the p = 0 run never sees them)."""
    kept = df[~df["p"].isin(list(untrained_curriculum_runs(df)))]
    return kept[kept["p"] >= 1]


def depth_tests(df) -> list[str]:
    """The OOD depth test sets of a curriculum run, shallowest first (``depth-6`` .. at paper
    scale, ``depth-3`` .. on the scaled-down task): the paper's 6, 7, 8, 9 in that order."""
    names = {t for t in df["test_set"].unique() if t.count("-") == 1 and t.startswith("depth-")}
    return sorted(names, key=lambda t: int(t.split("-")[1]))


def draws(df, scope: str) -> dict[int, dict]:
    """Each draw of ``scope``'s excluded-pairs test at each exclusion % (ascending), by seed
    (None without a ``seed`` column): ``(run EM, reference EM)`` on the same set (rows
    ``excluded-base``; NaN where the results have none). One draw per point unless a scale
    draws some points more than once (``coverage_drawn``)."""
    d = df[df["scope"] == scope]
    key = ["exclusion_pct"] + (["seed"] if "seed" in d else [])
    ex = d[d["test_set"] == "excluded"].set_index(key)["exact_match"].astype(float)
    ref = d[d["test_set"] == "excluded-base"].set_index(key)["exact_match"].astype(float)
    ref = ref[~ref.index.duplicated()]
    out: dict[int, dict] = {}
    for k, em in ex.sort_index().items():
        pct, seed = k if isinstance(k, tuple) else (k, None)
        out.setdefault(pct, {})[seed] = (float(em), float(ref.get(k, math.nan)))
    return out


def excluded_curve(df, scope: str) -> tuple[list, list, list | None, list | None]:
    """The excluded-pairs test of ``scope``'s exclusion runs, by exclusion %: ``(pcts, ems,
    refs, shares)``, ``refs`` the reference model's EM on the same test sets (rows
    ``excluded-base``) and ``shares`` = ``ems / refs``, what the runs trace of what a model
    that saw every pair traces of those snippets; both None where a run has no reference. A
    point drawn more than once (:func:`draws`) is pooled: the mean EM of its runs and of their
    references (equal test sizes), so its share is what the runs trace over what the
    references trace, and a draw whose reference traces less weighs less."""
    by = {p: list(each.values()) for p, each in draws(df, scope).items()}
    pcts = sorted(by)
    ems = [sum(e for e, _ in by[p]) / len(by[p]) for p in pcts]
    refs = [sum(r for _, r in by[p]) / len(by[p]) for p in pcts]
    if not all(r > 0 for r in refs):  # a NaN (no reference) or 0: nothing to divide by
        refs = None
    shares = None if refs is None else [e / r for e, r in zip(ems, refs)]
    return pcts, ems, refs, shares


def corpora_by_size(df) -> list[str]:
    """The robustness results' corpora, largest first."""
    return (df.sort_values("corpus_snippets", ascending=False)["corpus"]
            .drop_duplicates().tolist())


def last_epochs(df):
    """The robustness results at each corpus's own last epoch (results still coming in may
    have reached different epochs on different corpora)."""
    return df[df["epoch"] == df.groupby("corpus")["epoch"].transform("max")]


def _last_edited(df):
    """The edits' EM on the correctly traced snippets, each corpus at its last epoch."""
    last = last_epochs(df)
    return last[(last["subset"] == "correct") & (last["edit"] != "none")].dropna(
        subset=["exact_match"])


def corpus_labels(df) -> dict[str, str]:
    """Each corpus's name for the last-epoch readings, with the epoch they are of where the
    corpora's last epochs differ (a less trained corpus looks more brittle)."""
    last = last_epochs(df).groupby("corpus")["epoch"].max()
    if last.nunique() <= 1:
        return {c: c for c in last.index}
    return {c: f"{c} (epoch {e})" for c, e in last.items()}


def edited_at(df, corpus, epoch) -> tuple[float, float]:
    """A robustness run's (base test EM, mean EM of the edits on the correctly traced snippets)
    at ``epoch`` of ``corpus``: the two curves of the paper's Fig. 3."""
    d = df[(df["corpus"] == corpus) & (df["epoch"] == epoch)]
    return mean_em(d, edit="none"), mean_em(d[(d["subset"] == "correct") & (d["edit"] != "none")])


def nearest_base(df, base: float) -> tuple | None:
    """The (corpus, epoch, base test EM, edited EM) of the robustness results whose base test EM
    is nearest ``base``; None without results."""
    pairs = [(c, e, *edited_at(df, c, e)) for c, e in
             df[["corpus", "epoch"]].drop_duplicates().itertuples(index=False)]
    pairs = [p for p in pairs if not math.isnan(p[2])]
    return min(pairs, key=lambda p: abs(p[2] - base)) if pairs else None


def measured(experiment: str, df, relative: bool = False) -> dict:
    """Our value for each key the paper reports about ``experiment``
    (:mod:`tinytrace.report.paper`), computed from the tidy results; keys we cannot measure at
    this scale are left out. ``relative``: the pair-coverage thresholds are read off
    :func:`excluded_curve`'s shares (below the paper's scale)."""
    out: dict = {}
    df = df.reset_index(drop=True)  # results concatenated per run repeat their index
    if experiment == "base":
        for ts in ("id", "longer", "deeper"):
            out[ts] = mean_em(df, test_set=ts)
        if "clip_rate" in df:
            v = df["clip_rate"].dropna()
            if len(v):
                out["deeper_clipping"] = f"clip rate {float(v.iloc[0]):.2f}"
    elif experiment == "id_robustness":
        corpora = corpora_by_size(df)
        if len(corpora) >= 2:
            # Fig. 3's epoch 1 (NaN where these results have no epoch 1 of that corpus)
            base, edited = edited_at(df, corpora[1], 1)
            out["corpus2_epoch1_base"], out["corpus2_epoch1_edited"] = base, edited
        lowest, label = lowest_edits(df), corpus_labels(df)
        if lowest:
            out["neutral_assignment_drop"] = ("lowest edit on the smaller corpora: " + ", ".join(
                f"{label[c]}: {' = '.join(e)}" for c, (e, _) in lowest.items()))
        brittle = brittleness(df)
        if len(brittle) >= 2:
            out["larger_corpora_less_brittle"] = ", ".join(
                f"{label[c]}: {b:.3f}" for c, b in brittle.items())
        gap = same_subset_gap(df)
        if gap is not None:  # Fig. 12 like for like: the edit's applicable snippets, unaltered
            out["full_test_matches"] = f"max |EM(edit) - EM(unaltered, same snippets)| = {gap:.3f}"
    elif experiment == "pair_coverage":
        allowed = df[df["test_set"] == "allowed"]["exact_match"].dropna()
        if len(allowed):
            out["allowed_stays_high"] = f"lowest allowed-pairs EM {float(allowed.min()):.3f}"
        for scope, key in (("assignment", "assignment_excluded_above_80_until"),
                           ("global", None)):
            pcts, ems, _, shares = excluded_curve(df, scope)
            if not pcts:
                continue
            if relative and shares is not None:
                ems = shares
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
        tests = depth_tests(df)
        if len(tests) >= 4:
            d6, d7, d8, d9 = tests[:4]
            out["depth6_p0"] = mean_em(df, test_set=d6, p=0)  # NaN without the p = 0 run
            later = trained_later_runs(df)
            if len(later):
                out["depth67_p1"] = float(
                    later[later["test_set"].isin([d6, d7])].groupby("p")["exact_match"].min().min())
            if (later["test_set"] == d8).any():
                out["depth8_best"] = float(later[later["test_set"] == d8]["exact_match"].max())
                out["depth9"] = f"best over p >= 1: {float(later[later['test_set'] == d9]['exact_match'].max()):.3f}"
    elif experiment == "sft_lora":
        d = select_sft(df)
        for model, k in (("pre-trained", "pretrained"), ("fine-tuned", "finetuned")):
            for ts in ("id", "deeper", "longer"):
                out[f"{k}_{ts}"] = mean_em(d, model=model, test_set=ts)
        tp = d[d["model"] == "fine-tuned"].get("trainable_params", pd.Series(dtype=float)).dropna()
        if len(tp):
            out["trainable_params"] = int(tp.iloc[0])
    elif experiment == "pe_ablation":
        for pe in ("ape", "rpe", "rpb"):
            for ts in ("id", "longer", "deeper"):
                out[f"{pe}_{ts}"] = mean_em(df, model=pe, test_set=ts)
    else:
        raise ValueError(f"unknown experiment {experiment!r}")
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def train_hours(run_dir) -> float | None:
    """Wall-clock training time of a run, from the timestamps of its log (None if absent)."""
    try:
        lines = Path(run_dir, "log.jsonl").read_text().splitlines()
    except OSError:
        return None
    recs = []
    for line in lines:  # a log still being written may end in half a line
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue
    recs = [r for r in recs if isinstance(r, dict)]
    times = [r["time"] for r in recs if isinstance(r.get("time"), (int, float))]
    if len(times) >= 2:
        return (max(times) - min(times)) / 3600
    secs = [r.get("elapsed_s") for r in recs if isinstance(r.get("elapsed_s"), (int, float))]
    return max(secs) / 3600 if secs else None


def trained_tokens(run_dir) -> int | None:
    """The tokens of one epoch of a run's training split, from its record ``run.json`` (None
    where it has none)."""
    try:
        return json.loads(Path(run_dir, "run.json").read_text())["data"]["train_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- where the model fails (beyond the paper, which shows failures only by example) --------------
FAILURE_CLASSES = ("snippet copy", "@ line (control flow)", "indentation (depth)", "state value",
                   "final state", "length")


def classify_failure(prediction: str, target: str) -> str | None:
    """The kind of the first wrong character of a trace (None when the trace is right).

    The line holding it decides: an ``@^`` line is the final state; a differing
    :func:`indent` is indentation (a deeper line re-indented; a clipped trace that drops the
    ``if`` line opening a deeper block first goes wrong at a snippet copy instead, see
    :func:`clip_rate`); an ``@`` on one side only is the line about to run (control flow);
    after the line's ``$`` it is a state value; else a copy of the snippet. A prediction that
    stops early or runs on past a right trace is ``length``."""
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
    if indent(t_line) != indent(p_line):
        return "indentation (depth)"
    if t_mark != p_mark:
        return "@ line (control flow)"
    if "$" in t_line and i - start > t_line.index("$"):
        return "state value"
    return "snippet copy"


def indent(line: str) -> int:
    """A trace line's nesting depth: its leading tabs, after the ``@`` of a marked line."""
    body = line.lstrip("@")
    return len(body) - len(body.lstrip("\t"))


def max_indent(predictions, targets) -> list[list[int]]:
    """Per example, ``[target, prediction]``: the deepest :func:`indent` of any of its lines
    (what :func:`clip_rate` reads)."""
    deepest = lambda text: max(indent(ln) for ln in text.split("\n"))  # noqa: E731
    return [[deepest(t), deepest(p)] for p, t in zip(predictions, targets)]


def clip_rate(result: dict, depth: int) -> float | None:
    """The paper's clipping (Sec. 4.3: the model "does not recognize the new nesting levels,
    thus clipping all lines at a depth of 3 or 4 to only 2"): of the failing traces whose target
    goes deeper than ``depth`` (the deepest the model trained on), the share whose prediction
    never does; None without such failures. ``result``: a cached evaluation (``correct`` and
    :func:`max_indent`).

    A model that drops the ``if`` line opening a deeper block and writes its body one level up
    clips too, though its first wrong token is a snippet copy, not an indentation."""
    failed = [pred for ok, (target, pred) in zip(result["correct"], result["max_indent"])
              if not ok and target > depth]
    return sum(pred <= depth for pred in failed) / len(failed) if failed else None


def failure_counts(predictions, targets) -> dict[str, int]:
    """How many traces fail at each :data:`FAILURE_CLASSES` kind (zeros included)."""
    counts = dict.fromkeys(FAILURE_CLASSES, 0)
    for p, t in zip(predictions, targets):
        kind = classify_failure(p, t)
        if kind:
            counts[kind] += 1
    return counts


def lowest_edits(df) -> dict[str, tuple[list[str], int]]:
    """Per smaller corpus (all but the two largest; the smallest where there are fewer), at
    its last epoch: the edits with the lowest EM on the correctly traced snippets, every one
    of them where they tie, in name order, and how many edits it has (Sec. 4.1: neutral
    assignment drops most on the smaller corpora)."""
    if "subset" not in df or df.empty:
        return {}
    corpora, corr = corpora_by_size(df), _last_edited(df)
    out = {}
    for c in corpora[2:] or corpora[-1:]:
        em = corr[corr["corpus"] == c].groupby("edit")["exact_match"].mean()
        if len(em):
            out[c] = (sorted(em.index[em == em.min()]), len(em))
    return out


def brittleness(df):
    """Per corpus (largest first): the mean share of correctly traced snippets an edit breaks
    (1 - EM on the ``correct`` subset) at its last epoch."""
    if "subset" not in df or df.empty:
        return pd.Series(dtype=float)
    last = _last_edited(df)
    sizes = last.groupby("corpus")["corpus_snippets"].first().sort_values(ascending=False)
    return (1 - last.groupby("corpus")["exact_match"].mean()).reindex(sizes.index)


def same_subset_gap(df) -> float | None:
    """The largest |EM(edited) - EM(unaltered)| on the same snippets (the edit's applicable
    subset, ``base_same_subset``) over corpora and epochs; None when not recorded."""
    if "base_same_subset" not in df:
        return None
    full = df[(df["subset"] == "full") & (df["edit"] != "none")].dropna(subset=["base_same_subset"])
    if full.empty:
        return None
    return float((full["exact_match"].astype(float) - full["base_same_subset"].astype(float)).abs().max())
