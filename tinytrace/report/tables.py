"""Paper-vs-ours tables: the paper's reported numbers (:mod:`.paper`) beside what the
experiments measured (:mod:`tinytrace.experiments.analysis`), and their display format.

Exact match is stored as a fraction and shown in percent.
"""
from __future__ import annotations

import math

import pandas as pd

from tinytrace.experiments import get_scale, measured, select_sft, train_hours, trained_tokens
from tinytrace.experiments.analysis import draws, excluded_curve
from tinytrace.model import count_params

from . import paper
from .verdicts import verdicts

PCT = 100.0
TEST_SET_ORDER = ["id", "longer", "deeper"]


def order(values, preferred: list[str]) -> list[str]:
    """The distinct ``values`` (as text), those in ``preferred`` first and in its order."""
    present = list(dict.fromkeys(str(v) for v in values))
    return [v for v in preferred if v in present] + [v for v in present if v not in preferred]


def pct(df: pd.DataFrame, col: str = "exact_match") -> pd.DataFrame:
    """``df`` with an ``EM (%)`` column: ``col`` in percent."""
    df = df.copy()
    df["EM (%)"] = df[col].astype(float) * PCT
    return df


def comparison(experiment: str, df, scale: str, hardware: str = ""):
    """:func:`.paper.compare` of our measured values, with the experiment of each row (read
    as :func:`.verdicts.verdicts` reads them: below the paper's scale, relative where a
    reference exists)."""
    table = paper.compare(experiment, measured(experiment, df, relative=scale != "paper"), scale, hardware,
                          verdicts(experiment, df, scale))
    table.insert(0, "experiment", experiment)
    return table


def generator_comparison(stats, scale: str, hardware: str = "", described: str | None = None):
    """Sec. 2/3.2 setup numbers the generator determines, paper beside ``stats``: tokens per
    example (933M tokens / 3M snippets), statements, depth. ``described`` says what ``stats``
    were computed on (e.g. "the paper's `base` preset" or "the `cpu` ID task"); it goes in the
    scale column, so that a row never claims a scale whose task it was not computed on."""
    tokens = paper.reported("base", "corpus_tokens")
    snippets = paper.reported("base", "corpus_snippets")
    rows = [
        ("tokens per example, mean", f"{tokens.section} (933M / 3M)",
         tokens.value / snippets.value, float(stats["n_tokens"].mean())),
        ("statements per snippet, min-max", "3.2", "5-10",
         f"{stats['n_statements'].min()}-{stats['n_statements'].max()}"),
        ("if-nesting depth, max", "3.2", 2, int(stats["max_depth"].max())),
    ]
    return pd.DataFrame([{"experiment": "generator", "key": k.split(",")[0].replace(" ", "_"),
                          "what": k, "section": s, "paper": p, "this run": o,
                          "scale": described or scale,
                          "hardware": hardware, "kind": "setup"} for k, s, p, o in rows])


def setup_comparison(scale: str, run_dir=None, hardware: str = ""):
    """The paper's setup numbers (Sec. 3, App. C) beside this scale's: corpus, test size,
    epochs, model size and, from the run's records, the tokens of its training split (the
    paper's 933M are those of the 3M snippets it trains on, Sec. 3.4; the snippets row counts
    the test and validation splits too) and the training time."""
    s = get_scale(scale)
    ours = {"corpus_snippets": s.corpus_snippets, "test_size": s.test_size,
            "epochs": s.train.epochs, "model_params": count_params(s.model_config())}
    if run_dir is not None:
        hours = train_hours(run_dir)
        if hours is not None:
            ours["train_hours"] = round(hours, 4)
        tokens = trained_tokens(run_dir)
        if tokens is not None:  # else (a run without its record) the row reads n/a
            ours["corpus_tokens"] = tokens
    rows = []
    for r in paper.REPORTED:
        if r.experiment == "base" and r.kind == "setup":
            rows.append({"experiment": "base", "key": r.key, "what": r.what, "section": r.section,
                         "paper": r.value, "this run": ours.get(r.key, math.nan), "scale": scale,
                         "hardware": hardware, "kind": "setup"})
    return pd.DataFrame(rows)


def show_comparison(table):
    """A paper-vs-ours table for display: EM in percent, the rest as given."""
    t = table.copy()
    kinds = t["kind"] if "kind" in t else ["exact_match"] * len(t)
    for col in ("paper", "this run"):
        t[col] = [fmt(v, k) for v, k in zip(t[col], kinds)]
    keep = [c for c in ("what", "section", "paper", "this run", "scale", "verdict", "evidence") if c in t]
    return t[keep].set_index("what")


def fmt(v, kind: str = "exact_match") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    if kind == "exact_match" and isinstance(v, (int, float)) and 0 <= v <= 1:
        return f"{100 * v:.2f}%"
    if kind == "threshold" and isinstance(v, float) and 0 <= v <= 1:  # an EM, not a percentage
        return f"{100 * v:.2f}%"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (int, float)):
        return f"{int(v):,}"
    return str(v)


def ood_table(df: pd.DataFrame) -> pd.DataFrame:
    """EM of the base model per test set with the paper's value (Sec. 4.3, Table 3 row 1)."""
    rows = []
    for ts in order(df["test_set"], TEST_SET_ORDER):
        em = _first(df[df["test_set"] == ts], "exact_match")
        rows.append({"test_set": ts, "paper": _paper("base", ts), "this run": em})
    return pd.DataFrame(rows)


def _first(d: pd.DataFrame, col: str):
    if col not in d:
        return math.nan
    v = d[col].dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def _paper(experiment: str, key: str):
    try:
        v = paper.reported(experiment, key).value
    except KeyError:
        return math.nan
    return v if isinstance(v, (int, float)) else math.nan


def table3(df: pd.DataFrame) -> pd.DataFrame:
    """Table 3: pre-trained vs LoRA fine-tuned EM on ID, deeper and longer, paper beside ours.
    With several fine-tuned runs (data size x epochs) the selected one is used (see
    :func:`tinytrace.experiments.select_sft`)."""
    d = select_sft(df)
    keys = {"pre-trained": "pretrained", "fine-tuned": "finetuned"}
    rows = []
    for model in ["pre-trained", "fine-tuned"]:
        for ts in ["id", "deeper", "longer"]:
            m = d[(d["model"] == model) & (d["test_set"] == ts)]
            rows.append({"model": model, "test_set": ts,
                         "paper": _paper("sft_lora", f"{keys[model]}_{ts}"),
                         "this run": _first(m, "exact_match")})
    return pd.DataFrame(rows)


def table4(df: pd.DataFrame) -> pd.DataFrame:
    """Table 4: EM of APE, RPE (Shaw) and RPB (T5) models on ID, longer and deeper."""
    rows = []
    for model in order(df["model"], ["ape", "rpe", "rpb"]):
        for ts in ["id", "longer", "deeper"]:
            m = df[(df["model"] == model) & (df["test_set"] == ts)]
            row = {"model": model, "test_set": ts, "paper": _paper("pe_ablation", f"{model}_{ts}"),
                   "this run": _first(m, "exact_match")}
            if "params" in df:
                row["params"] = _first(m, "params")
            rows.append(row)
    return pd.DataFrame(rows)


def em_table(df: pd.DataFrame, index, columns) -> pd.DataFrame:
    """Exact match in percent as a grid (e.g. corpus x epoch by edit, p by test set)."""
    t = pct(df).pivot_table(index=index, columns=columns, values="EM (%)", sort=False)
    return t.round(2)


def clip_table(df: pd.DataFrame) -> pd.DataFrame:
    """The curriculum runs' clipping, p by depth test set: of each set's failing traces, the
    share (%) that write no line deeper than the run trained on (``trained_depth``), and no
    line more than one level deeper; empty where the set is not that deep."""
    names = {"clip_rate": "<= trained depth", "clip_rate_next": "<= trained depth + 1"}
    cols = [c for c in names if c in df]
    d = df.assign(**{names[c]: df[c].astype(float) * PCT for c in cols})
    t = d.pivot_table(index=["p", "trained_depth"], columns="test_set",
                      values=[names[c] for c in cols], sort=False)
    t.columns.names = ["failing traces with no line deeper than (%)", "test set"]
    return t.round(1)


def draws_table(df: pd.DataFrame) -> pd.DataFrame:
    """The exclusion points drawn more than once (a scale's ``coverage_drawn``, not in the
    paper): one row per draw (its seed) with its run's allowed- and excluded-pairs EM, the
    reference model's EM on the same excluded-pairs set and the share, then the pooled row the
    verdicts read (:func:`tinytrace.experiments.analysis.excluded_curve`); empty where no point
    was drawn more than once."""
    rows = []
    for scope in order(df["scope"], ["assignment", "global"]) if "seed" in df else []:
        d = df[df["scope"] == scope]
        allowed = d[d["test_set"] == "allowed"].set_index(["exclusion_pct", "seed"])["exact_match"]
        pcts, ems, refs, _ = excluded_curve(df, scope)
        for p, each in draws(df, scope).items():
            if len(each) > 1:
                rows += [(scope, p, str(seed), allowed.get((p, seed), math.nan), e, r)
                         for seed, (e, r) in each.items()]
                i = pcts.index(p)
                at = allowed[allowed.index.get_level_values("exclusion_pct") == p]
                rows.append((scope, p, "pooled", at.astype(float).mean(), ems[i],
                             refs[i] if refs else math.nan))
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows, columns=["scope", "exclusion_pct", "seed", "allowed EM (%)",
                                    "excluded EM (%)", "reference EM (%)"])
    t = t.set_index(["scope", "exclusion_pct", "seed"]).astype(float) * PCT
    t["share of the reference (%)"] = t["excluded EM (%)"] / t["reference EM (%)"] * PCT
    return t.round(1)


def wide(table: pd.DataFrame, index: str = "model") -> pd.DataFrame:
    """A paper-vs-ours long table as the paper prints it: one row per ``index``, one column
    pair (paper, this run) per test set, in percent."""
    t = table.copy()
    for c in ("paper", "this run"):
        t[c] = t[c].astype(float) * PCT
    w = t.pivot_table(index=index, columns="test_set", values=["paper", "this run"], sort=False)
    w = w.swaplevel(0, 1, axis=1)
    sets = order(t["test_set"], TEST_SET_ORDER)
    w = w.reindex(columns=[(ts, s) for ts in sets for s in ("paper", "this run")])
    w.columns.names = ["test set", "EM (%)"]
    return w.round(2)



def failure_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per test set of the base results: traces, failures, each kind of first wrong token
    (``fail: <kind>`` columns) and, on the deeper set, the clipping rate (the share of its
    failures that write no line deeper than the ID depth: :func:`~tinytrace.experiments.
    analysis.clip_rate`)."""
    repeated = sorted(df["test_set"][df["test_set"].duplicated()].unique())
    if repeated:
        raise ValueError(f"failure_table reads one base run's results; these have test sets "
                         f"{repeated} more than once (results of several runs?)")
    cols = [c for c in df.columns if c.startswith("fail: ")]
    d = df.set_index("test_set").reindex(order(df["test_set"], TEST_SET_ORDER))
    t = d[cols].fillna(0).astype(int)
    t.columns = [c.removeprefix("fail: ") for c in cols]
    t.insert(0, "failed", t.sum(axis=1))
    t.insert(0, "n", d["n"].astype(int))
    if "clip_rate" in d:
        t["clip rate"] = [fmt(v) for v in d["clip_rate"]]
    return t


def fig12_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fig. 12 like for like: per corpus, epoch and edit, the snippets the edit applies to
    (n) and those it skips, EM under the edit and EM of the unaltered test on the same
    snippets, and their difference in points."""
    d = df[(df["subset"] == "full") & (df["edit"] != "none")].copy()
    if "base_same_subset" not in d:
        d["base_same_subset"], d["n_skipped"] = float("nan"), float("nan")
    d["EM edited (%)"] = (d["exact_match"].astype(float) * PCT).round(2)
    d["EM unaltered, same snippets (%)"] = (d["base_same_subset"].astype(float) * PCT).round(2)
    d["difference (points)"] = (d["EM edited (%)"] - d["EM unaltered, same snippets (%)"]).round(2)
    d = d.rename(columns={"n_skipped": "skipped"})
    return d.set_index(["corpus", "epoch", "edit"])[
        ["n", "skipped", "EM edited (%)", "EM unaltered, same snippets (%)", "difference (points)"]]


def pe_params(scale: str) -> pd.DataFrame:
    """The PE ablation's models at a scale and at the paper's: APE is the reference; RPE and
    RPB get the n_embd (a multiple of n_head) whose parameter count is closest to it (G.2). At
    the paper's size the closest is APE's own n_embd, so matching changes nothing there."""
    from tinytrace.experiments.runners import _pe_config

    rows = []
    for name in dict.fromkeys((scale, "paper")):
        s = get_scale(name)
        for pe in s.pe_variants:
            cfg = _pe_config(s, pe)
            rows.append({"scale": name, "encoding": pe.upper(), "n_embd": cfg.n_embd,
                         "parameters": count_params(cfg)})
    return pd.DataFrame(rows).set_index(["scale", "encoding"])
