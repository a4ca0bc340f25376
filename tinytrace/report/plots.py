"""The paper's figures, drawn with seaborn from tidy results (Sec. 2-4, App. E-G).

Every function takes the DataFrame that :func:`tinytrace.experiments.run_experiment` returns
(or the generator statistics, training log or a paper-vs-ours table of :mod:`.tables`) and
returns a matplotlib ``Figure``; notebooks only call them. Exact match is stored as a fraction and drawn in
percent. Titles carry the scale, so a figure never loses where its numbers came from.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from tinytrace.evaluate import SCORES
from tinytrace.experiments.analysis import corpora_by_size
from tinytrace.lang.edits import EDIT_NAMES

from .tables import PCT, TEST_SET_ORDER, ood_table, order, pct

THEME = {"style": "whitegrid", "context": "notebook"}
EDIT_ORDER = ["none", *EDIT_NAMES]  # "none": the unaltered test set
METRIC_LABELS = dict(zip(SCORES, ("exact match", "step EM (teacher forced)", "final state match",
                                  "state token accuracy")))


def _theme():
    sns.set_theme(**THEME)


def _scale_note(df: pd.DataFrame) -> str:
    scales = sorted(set(df["scale"].dropna().astype(str))) if "scale" in df else []
    return f"scale: {', '.join(scales)}" if scales else ""


# --- Sec. 2: the generator ---------------------------------------------------------------------
def generator_distributions(stats: pd.DataFrame, title: str = "") -> plt.Figure:
    """Histograms of statements, nesting depth, executed steps and tokens per snippet."""
    _theme()
    cols = [("n_statements", "statements"), ("max_depth", "max if-nesting depth"),
            ("n_steps", "executed steps"), ("n_tokens", "tokens per example")]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for ax, (col, label) in zip(axes, cols):
        discrete = col != "n_tokens"
        sns.histplot(stats, x=col, discrete=discrete, stat="percent", ax=ax,
                     bins="auto" if discrete else 40)
        ax.set_xlabel(label)
        ax.set_ylabel("snippets (%)" if ax is axes[0] else "")
    fig.suptitle(title or f"Generator output: {len(stats):,} accepted snippets")
    fig.tight_layout()
    return fig


def rejections(counts: dict, title: str = "") -> plt.Figure:
    """Why generated snippets were rejected (counts per reason, accepted included)."""
    _theme()
    df = pd.DataFrame({"reason": list(counts), "snippets": [counts[k] for k in counts]})
    df = df.sort_values("snippets", ascending=False)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.2))
    sns.barplot(df, y="reason", x="snippets", ax=ax, color="C0")
    for c in ax.containers:
        ax.bar_label(c, fmt="{:,.0f}", padding=3)
    ax.set_title(title or "Generation attempts by outcome")
    fig.tight_layout()
    return fig


# --- Sec. 3: training and ID accuracy ----------------------------------------------------------
def loss_curve(log: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss (log scale) and learning rate against the optimizer step."""
    _theme()
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(12, 3.6))
    sns.lineplot(log, x="step", y="loss", ax=ax)
    ax.set_yscale("log")
    ax.set_title("training loss")
    if "lr" in log and log["lr"].notna().any():
        sns.lineplot(log, x="step", y="lr", ax=ax_lr, color="C1")
        ax_lr.set_title("learning rate")
    else:
        ax_lr.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_vs_time(curve: pd.DataFrame, title: str = "Training loss against wall-clock time") -> plt.Figure:
    """``curve`` rows: ``elapsed_s``, ``loss`` (and ``run`` when several)."""
    _theme()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=curve, x="elapsed_s", y="loss", hue="run" if "run" in curve else None, ax=ax,
                 marker="o", markersize=3)
    ax.set(xlabel="wall-clock seconds (one GPU: the run's, in its label)", ylabel="training loss",
           title=title)
    if ax.get_legend() is not None:
        ax.legend(fontsize=7, title=None)
    fig.tight_layout()
    return fig


def metrics_bars(df: pd.DataFrame, title: str = "") -> plt.Figure:
    """Exact match and the early metrics per test set, in percent."""
    _theme()
    cols = [c for c in SCORES if c in df]
    long = df.melt(id_vars=["test_set"], value_vars=cols, var_name="metric", value_name="value")
    long = long.dropna(subset=["value"])
    long["metric"] = long["metric"].map(METRIC_LABELS)
    long["%"] = long["value"].astype(float) * PCT
    fig, ax = plt.subplots(figsize=(9, 3.6))
    sns.barplot(long, x="test_set", y="%", hue="metric", ax=ax,
                order=order(long["test_set"], TEST_SET_ORDER), errorbar=None)
    ax.set_ylim(0, 105)
    ax.set_xlabel("test set")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title(title or f"Greedy evaluation ({_scale_note(df)})")
    fig.tight_layout()
    return fig


# --- Sec. 4.1, App. E: in-distribution robustness (Fig. 3, Fig. 12) ----------------------------
def id_robustness(df: pd.DataFrame, subset: str = "correct", title: str = "") -> plt.Figure:
    """Fig. 3 (``subset="correct"``: edits applied to the snippets traced correctly) or Fig. 12
    (``subset="full"``: edits applied to the whole test set): EM per epoch, one panel per
    training corpus, one line per edit ("none" is the unaltered test set)."""
    _theme()
    d = df[df["subset"] == subset] if "subset" in df else df
    if not d["edit"].eq("none").any():
        # the unaltered test set ("none") is the reference line of both figures
        d = pd.concat([d, df[df["edit"] == "none"]])
    d = pct(d)
    corpora = corpora_by_size(d)
    g = sns.relplot(d, x="epoch", y="EM (%)", hue="edit", style="edit", col="corpus",
                    col_order=corpora, hue_order=order(d["edit"], EDIT_ORDER), kind="line",
                    markers=True, dashes=False, height=3.2, aspect=0.95,
                    facet_kws={"sharey": True})
    g.set(ylim=(-3, 103))
    g.set_titles("corpus {col_name}")
    fig_no = "3" if subset == "correct" else "12"
    g.figure.suptitle(title or f"Fig. {fig_no}: EM under in-distribution edits "
                      f"({'correctly traced snippets' if subset == 'correct' else 'full test set'}; "
                      f"{_scale_note(df)})", y=1.03)
    return g.figure


# --- Sec. 4.2, 4.2.1: pair coverage (Fig. 4a, 4b) ----------------------------------------------
def pair_coverage(df: pd.DataFrame, scope: str = "assignment", title: str = "") -> plt.Figure:
    """Fig. 4a (``scope="assignment"``) or 4b (``"global"``): EM on the allowed-pairs and
    excluded-pairs test sets against the percentage of the 351 pairs excluded from training,
    and (not in the paper) the reference model, which saw every pair, on the excluded-pairs sets.
    A point drawn more than once (a scale's ``coverage_drawn``) shows the mean over its draws,
    with a bar from the lowest to the highest draw."""
    _theme()
    d = pct(df[df["scope"] == scope]).sort_values("exclusion_pct")
    names = {"allowed": "Allowed Pairs Test", "excluded": "Excluded Pairs Test",
             "excluded-base": "Excluded Pairs Test, reference model (saw every pair)"}
    d["test set"] = d["test_set"].map(names).fillna(d["test_set"])
    present = [k for k in names if k in set(d["test_set"])]
    hues = [names[k] for k in present]
    pcts = sorted(d["exclusion_pct"].unique())
    # categorical x like the paper: 10..90 then 95..100 would crowd on a linear axis
    d["exclusion (%)"] = d["exclusion_pct"].map(lambda v: f"{v:g}")
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(pcts) + 2), 4.8))
    sns.pointplot(d, x="exclusion (%)", y="EM (%)", hue="test set", hue_order=hues,
                  order=[f"{v:g}" for v in pcts], ax=ax, errorbar=("pi", 100), capsize=0.15,
                  markers=[{"allowed": "o", "excluded": "s"}.get(k, "^") for k in present],
                  linestyles=[":" if k == "excluded-base" else "-" for k in present])
    ax.axhline(80, ls="--", lw=1, color="grey")
    ref = d[d["test_set"] == "excluded-base"].groupby("exclusion_pct")["EM (%)"].mean()
    if len(ref):  # the line the verdicts read below the paper's scale: 80% of the reference
        line = 0.8 * ref.reindex(pcts)  # at each point, pooled over its draws
        ax.plot(range(len(pcts)), line.to_numpy(), ls=":", lw=1, color="grey")
        ax.annotate("80% of the reference", (len(pcts) - 1, line.iloc[-1]), fontsize=7,
                    color="grey", ha="right", va="bottom")
    ax.set_ylim(-3, 103)
    # below the axes: inside, it hides the lines it names
    sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.2), title=None, frameon=False)
    fig_no = "4a" if scope == "assignment" else "4b"
    ax.set_title(title or f"Fig. {fig_no}: {scope} exclusion ({_scale_note(df)})")
    fig.tight_layout()
    return fig


# --- Sec. 4.3, 4.3.1, App. F -------------------------------------------------------------------
def exclusion_regimes(alphabet: str, pcts, seed: int = 0, title: str = "") -> plt.Figure:
    """Fig. 5: which unordered variable pairs each exclusion percentage removes (drawn by
    :func:`tinytrace.lang.config.sample_pairs` with the experiment's seed). The assignment
    scope removes them from the right-hand side of `x = u op v` only; the global scope from
    every construct."""
    from tinytrace.lang.config import sample_pairs

    _theme()
    pcts = list(pcts)
    n = len(alphabet)
    fig, axes = plt.subplots(1, len(pcts), figsize=(3.2 * len(pcts), 3.4), squeeze=False)
    for ax, pct in zip(axes[0], pcts):
        excluded = set(sample_pairs(pct, seed=seed, alphabet=alphabet))
        grid = [[float("nan") if j < i else float("".join(sorted(alphabet[i] + alphabet[j])) in excluded)
                 for j in range(n)] for i in range(n)]
        sns.heatmap(pd.DataFrame(grid, index=list(alphabet), columns=list(alphabet)), ax=ax,
                    cmap=["#4c72b0", "#dd8452"], vmin=0, vmax=1, cbar=False, square=True,
                    linewidths=0.3, linecolor="white")
        ax.set_title(f"{pct}% excluded ({len(excluded)} of {n * (n + 1) // 2})", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or "Fig. 5: excluded (orange) and allowed (blue) variable pairs")
    fig.tight_layout()
    return fig


SOURCES = ["paper", "this run"]  # the bars' hue order: one container each, in this order


def _label_bars(ax, sources: list[str]) -> None:
    """Each bar's value: the paper's as it states it (43.65, not 43.6), ours to 0.1."""
    for c, source in zip(ax.containers, sources):
        ax.bar_label(c, fmt=(lambda v: f"{round(v, 2):g}") if source == "paper" else "%.1f",
                     fontsize=8)


def paper_vs_ours(table: pd.DataFrame, x: str, hue: str | None = None, title: str = "") -> plt.Figure:
    """Grouped bars of a table with columns ``x``, (``hue``), ``paper`` and ``this run``
    (fractions): paper and this run side by side."""
    _theme()
    ids = [x] + ([hue] if hue else [])
    long = table.melt(id_vars=ids, value_vars=["paper", "this run"], var_name="source",
                      value_name="value").dropna(subset=["value"])
    long["EM (%)"] = long["value"].astype(float) * PCT
    sources = [v for v in SOURCES if v in set(long["source"])]
    if hue:
        g = sns.catplot(long, x=x, y="EM (%)", hue="source", hue_order=sources, col=hue,
                        kind="bar", height=3.4, aspect=0.9, errorbar=None)
        g.set(ylim=(0, 105))
        g.set_titles("{col_name}")
        for ax in g.axes.flat:
            _label_bars(ax, sources)
        g.figure.suptitle(title, y=1.04)
        return g.figure
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(long, x=x, y="EM (%)", hue="source", hue_order=sources, ax=ax, errorbar=None)
    _label_bars(ax, sources)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ood_numbers(df: pd.DataFrame, title: str = "") -> plt.Figure:
    """The Sec. 4.3 numbers: the base model on ID, longer and deeper, beside the paper's."""
    t = ood_table(df)
    return paper_vs_ours(t, x="test_set",
                         title=title or f"Sec. 4.3: base model, ID vs OOD ({_scale_note(df)})")


def failure_kinds(df: pd.DataFrame, title: str = "") -> plt.Figure:
    """Where the base model fails (beyond the paper): per test set, the share of all traces
    that first go wrong at each kind of token (``fail: <kind>`` columns of the base results,
    :data:`tinytrace.experiments.analysis.FAILURE_CLASSES`); the rest are correct. A trace
    clipped to the ID depth fails first at an indentation or, when it drops the ``if`` line
    opening a deeper block, at a snippet copy (the clip rate counts both)."""
    _theme()
    cols = [c for c in df.columns if c.startswith("fail: ")]
    d = df.set_index("test_set").reindex(order(df["test_set"], TEST_SET_ORDER))
    share = d[cols].astype(float).div(d["n"].astype(float), axis=0) * PCT
    share.columns = [c.removeprefix("fail: ") for c in cols]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    left = pd.Series(0.0, index=share.index)
    for kind, color in zip(share.columns, sns.color_palette("deep", len(share.columns))):
        ax.barh(share.index, share[kind], left=left, color=color, label=kind)
        left += share[kind]
    for i, (ts, row) in enumerate(d.iterrows()):
        failed = int(row[cols].sum())
        ax.text(min(left[ts], 100) + 1, i, f"{failed}/{int(row['n'])} failed", va="center", fontsize=9)
    ax.set_xlim(0, 118)
    ax.invert_yaxis()
    ax.set_xlabel("traces (%) failing first at ...")
    ax.set_ylabel("test set")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False, title="first wrong token")
    ax.set_title(title or f"Where the base model fails ({_scale_note(df)})")
    fig.tight_layout()
    return fig


def depth_order(names) -> list[str]:
    """The training-range set (``depth-0-5``) first, then ``depth-6``, ``depth-7``, ... by depth
    (scaled names such as ``depth-0-2``, ``depth-3`` sort the same way)."""
    names = list(dict.fromkeys(str(n) for n in names))
    return sorted(names, key=lambda t: (t.count("-") == 1, int(t.rsplit("-", 1)[-1])
                                        if t.rsplit("-", 1)[-1].isdigit() else 0, t))


def depth_curriculum(df: pd.DataFrame, title: str = "") -> plt.Figure:
    """Fig. 13: EM on depth 0-5 and on depths 6, 7, 8, 9 against p, the percentage of
    depth-6/7 snippets in training."""
    _theme()
    d = pct(df).sort_values("p")
    d["p (%)"] = d["p"].map(lambda v: f"{v:g}")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    sns.pointplot(d, x="p (%)", y="EM (%)", hue="test_set",
                  order=[f"{v:g}" for v in sorted(d["p"].unique())],
                  hue_order=depth_order(d["test_set"]), ax=ax, errorbar=None)
    ax.set_ylim(-3, 103)
    ax.legend(title="test set", loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title(title or f"Fig. 13: depth generalization vs p ({_scale_note(df)})")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Release a figure (long notebooks otherwise keep every figure alive)."""
    plt.close(fig)

