"""What the section notebooks call: the banner, task tables and examples, the paper-vs-ours
tables (:mod:`.tables`) and the results JSON each notebook writes next to itself.

A notebook imports ``from tinytrace.report import nbkit as nb`` (and :mod:`.plots` for
figures); everything here computes from :mod:`tinytrace.experiments` results.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import random
from collections import Counter
from pathlib import Path

import pandas as pd

from tinytrace.data import Pipeline
from tinytrace.experiments import get_scale
from tinytrace.experiments.cache import compute_used
from tinytrace.lang import generator as G
from tinytrace.lang.config import GeneratorConfig, get_preset
from tinytrace.lang.edits import EDIT_NAMES, apply_edit
from tinytrace.lang.program import render
from tinytrace.provenance import code_dirty, git_commit, hardware, versions

from .pages import cost_minutes
from .sections import NOTEBOOKS, Section
from .tables import (
    clip_table,
    comparison,
    draws_table,
    em_table,
    failure_table,
    fig12_table,
    generator_comparison,
    ood_table,
    pe_params,
    setup_comparison,
    show_comparison,
    table3,
    table4,
    wide,
)

__all__ = [
    "clip_table",
    "draws_table",
    "failure_table",
    "NOTEBOOKS",
    "Markdown",
    "Section",
    "banner",
    "comparison",
    "em_table",
    "example",
    "generator_comparison",
    "hardware",
    "ood_table",
    "pipeline_outcomes",
    "scale_note",
    "setup_comparison",
    "show_comparison",
    "speed_table",
    "table3",
    "table4",
    "task_examples",
    "task_table",
    "wide",
    "write_results_json",
    "written",
]

# tqdm.auto warns in kernels without ipywidgets (progress then falls back to text bars)


class Markdown(str):
    """A string Jupyter displays as Markdown (no IPython import needed here)."""

    def _repr_markdown_(self):
        return str(self)


# --- helpers the notebooks call ----------------------------------------------------------------
def scale_note(scale: str) -> str:
    """One sentence saying what a scale's numbers can be compared with."""
    s = get_scale(scale)
    t = s.generator("id")
    if s.name == "paper":
        return "the paper's sizes, epochs and model: numbers are directly comparable."
    task = (f"{t.min_statements}-{t.max_statements} statements, depth <= {t.max_depth}, "
            f"{len(t.variables)} variables, values in [{t.value_range[0]}, {t.value_range[1]}]")
    if s.name == "gpu":
        return (f"the paper's task and model ({task}) with a {s.corpus_snippets:,}-snippet corpus "
                f"and {s.train.epochs} epoch(s): trends comparable, not the exact numbers.")
    return (f"**results from the scaled-down task** ({task}; model `{s.model_label()}`, "
            f"{s.corpus_snippets:,}-snippet corpus, base run {s.train.epochs} epoch(s)). "
            "Compare trends with the paper, not numbers." +
            (" Smoke scale only checks that the code runs: its numbers mean nothing."
             if s.name == "smoke" else ""))


def banner(scale: str, hardware: str, seed: int) -> Markdown:
    """The line every notebook shows first: scale, hardware, seed and what they mean."""
    return Markdown(f"**Scale:** `{scale}` · **hardware:** {hardware} · **seed:** {seed}\n\n"
                    f"Scale `{scale}`: {scale_note(scale)}")


def training_caption(scale: str) -> Markdown:
    """What the scale's base run did (model, optimizer, schedule, batch, data), generated from
    its config, beside the paper's recipe (App. C.1), so a caption never describes another run."""
    s = get_scale(scale)
    tc, mc = s.train, s.model_config()
    block = tc.block_size or mc.block_size
    if tc.phase1_frac >= 1:
        shape = (f"one phase: {tc.warmup_frac:.0%} linear warmup to {tc.lr_peak:g}, cosine down "
                 f"to {tc.lr_min:g}")
    else:
        shape = (f"two phases ({tc.phase1_frac:.0%} / {1 - tc.phase1_frac:.0%} of the steps), each "
                 f"with {tc.warmup_frac:.0%} warmup and a cosine from {tc.lr_peak:g} to "
                 f"{tc.lr_min:g}, the second scaled by {tc.phase2_scale:g}")
    opt = ("AdamW" if tc.optimizer == "adamw" else
           f"Muon (peak {tc.muon_lr or tc.lr_peak:g}) on the blocks' matrices, AdamW on the rest")
    loss = ("" if tc.state_loss_weight == 1 else
            f", a loss that weighs the targets in each state list (the values the execution "
            f"produces) {tc.state_loss_weight:g}x over the rest (not in the paper)")
    ours = (f"**This run** (`{scale}`): model `{s.model_label()}` ({mc.n_layer} layers x "
            f"{mc.n_embd}, {mc.pe.upper()}), {opt}, {shape}, weight decay {tc.weight_decay:g}, "
            f"batch {tc.batch_size} x {block} tokens, {tc.epochs} epoch(s) of "
            f"{s.corpus_snippets:,} snippets{loss}.")
    if scale != "paper":
        p = get_scale("paper").train
        ours += (f" **The paper** (App. C.1): AdamW, two phases (warmup and cosine from "
                 f"{p.lr_peak:g} to {p.lr_min:g}, then the same x{p.phase2_scale:g}), batch "
                 f"{p.batch_size} x 512, {p.epochs} epochs of 3M snippets; its weight decay and "
                 f"betas are not stated for pre-training (the `paper` scale uses its fine-tuning "
                 f"values, G.1: {p.weight_decay:g} and {tuple(p.betas)}).")
    return Markdown(ours)


def task_table(scale: str):
    """The generator settings of each test/train role at a scale (statements, depth, ...)."""
    s = get_scale(scale)
    rows = []
    for role, g in s.task.items():
        rows.append({"role": role, "name": g.name,
                     "statements": f"{g.min_statements}-{g.max_statements}",
                     "depth": f"{g.min_depth}-{g.max_depth}", "variables": len(g.variables),
                     "values": f"[{g.value_range[0]}, {g.value_range[1]}]"})
    return pd.DataFrame(rows).set_index("role")


def example(preset="base", seed: int = 0) -> dict:
    """The first snippet the pipeline accepts for ``seed``: its code and full trace."""
    cfg = preset if isinstance(preset, GeneratorConfig) else get_preset(preset)
    pipe, rng, stats = Pipeline(cfg), random.Random(seed), Counter()
    while True:
        r = pipe.sample(rng, stats)
        if r is not None:
            return {"code": r["code"], "trace": r["trace"], "n_steps": r["n_steps"],
                    "n_tokens": r["n_tokens"]}


def task_examples(scale: str, roles=("id", "deeper", "longer"), seed: int = 0) -> dict:
    """One snippet per test role of a scale (the paper's Fig. 6: ID, deeper, longer)."""
    s = get_scale(scale)
    return {role: example(s.generator(role), seed)["code"] for role in roles}


# --- the generator's inner workings (Figs. 8-10, Table 1) and the edits (Fig. 11) -------------
KEYWORDS = {  # App. B, Table 1: the skeleton keywords of the default rules
    G.START: "begins a snippet (the root context)",
    G.ASSIGNMENT: "`x = ...`: a literal, a variable, or `u op v`",
    G.IF_STATEMENT: "opens an `if` context (`if u < v:`: two operands, variables or literals)",
    G.ELIF_STATEMENT: "opens an `elif` context after an `if`",
    G.ELSE_STATEMENT: "opens an `else` context after an `if`/`elif`",
    G.WHILE_LOOP: "opens a counted `while` loop context (`c = k` / `while c < m:` / `c = c + 1`)",
    G.UNINDENT: "closes the current context",
    G.END: "stops the generation",
}


def keyword_table() -> pd.DataFrame:
    """Table 1: the skeleton keywords the rules queue and what code instantiation makes of each."""
    return pd.DataFrame([{"keyword": k, "meaning": v} for k, v in KEYWORDS.items()]).set_index("keyword")


class _Recording:
    """Rules that delegate to ``rules`` and record the context stack at every call."""

    def __init__(self, rules):
        self.rules, self.events = rules, []
        if hasattr(rules, "accept"):
            self.accept = rules.accept

    def _record(self, g, phase: str, keyword: str = "") -> None:
        self.events.append({
            "phase": phase, "keyword": keyword, "depth": g.depth,
            "stack": " | ".join(f"{lv.gid.get('type', '?')}[{' '.join(lv.ckq)}]" for lv in g.stack),
            "code so far": len(g.lines)})

    def high_level(self, g):
        kws = self.rules.high_level(g)
        self._record(g, "skeleton (SCA) queues", " ".join(kws))
        return kws

    def low_level(self, g, keyword):
        self._record(g, "instantiation (CIA) takes", keyword)
        return self.rules.low_level(g, keyword)


def context_stack_trace(preset="base", seed: int = 0, rules=None) -> tuple[str, pd.DataFrame]:
    """Figs. 8-10: one snippet built by the real generator (Algorithm 1) through its context
    stack, with every skeleton and instantiation call: the keywords queued or taken, the
    depth and each level's type and keyword queue at that moment. ``rules``: any rules object
    (default: :class:`DefaultRules` of the preset). Returns the snippet and the events."""
    cfg = preset if isinstance(preset, GeneratorConfig) else get_preset(preset)
    rec = _Recording(rules if rules is not None else G.DefaultRules(cfg))
    lines = G.Generator(cfg, rules=rec).generate(random.Random(seed))
    last_try = max(i for i, e in enumerate(rec.events)  # the accepted try's first call
                   if e["phase"].startswith("skeleton") and e["code so far"] == 0)
    return render(lines), pd.DataFrame(rec.events[last_try:]).reset_index(drop=True)


def generate_with(rules_class, task: GeneratorConfig, n: int = 20, seed: int = 0) -> pd.DataFrame:
    """``n`` snippets of a user-defined distribution: ``rules_class(task)`` drives the real
    generator; each snippet is traced within the task's value range (``trace`` is None where a
    value leaves it)."""
    from tinytrace.lang.tracer import Rejected, trace

    gen, rng, rows = G.Generator(task, rules=rules_class(task)), random.Random(seed), []
    for _ in range(n):
        code = render(gen.generate(rng))
        try:
            rows.append({"code": code, "trace": trace(code, value_range=task.value_range)})
        except Rejected:
            rows.append({"code": code, "trace": None})
    return pd.DataFrame(rows)


def edit_examples(scale: str, seed: int = 0, tries: int = 200) -> pd.DataFrame:
    """Fig. 11: each of the five edits applied to an ID snippet of the scale (the first one,
    from ``seed`` on, that it applies to): what changed, the snippet before and after."""
    cfg = get_scale(scale).generator("id")
    pipe, rng, rows = Pipeline(cfg), random.Random(seed), []
    snippets = []
    while len(snippets) < tries:
        r = pipe.sample(rng, Counter())
        if r is not None:
            snippets.append(r["code"])
    for name in EDIT_NAMES:
        for i, code in enumerate(snippets):
            res = apply_edit(name, code, random.Random(seed + i), cfg)
            if res.applied:
                rows.append({"edit": name, "change": res.description, "before": code,
                             "after": res.code})
                break
    return pd.DataFrame(rows).set_index("edit")


def hyperparameters(scale: str) -> pd.DataFrame:
    """Table 2: the model and training hyperparameters of the scale's base run beside the
    paper's (App. C), from the configs; the paper column marks what App. C does not state."""
    from tinytrace.model import count_params

    def cols(s):
        mc, tc = s.model_config(), s.train
        return {
            "layers": mc.n_layer, "heads": mc.n_head, "embedding size": mc.n_embd,
            "head size": mc.head_size, "norm": "RMSNorm (pre-norm)", "position encoding": mc.pe.upper(),
            "context (tokens)": mc.block_size, "vocabulary": mc.vocab_size, "dropout": mc.dropout,
            "linear biases": "yes" if mc.bias else "none", "tied input/output embeddings": "yes",
            "parameters": f"{count_params(mc):,}", "optimizer": tc.optimizer,
            "peak / min LR": f"{tc.lr_peak:g} / {tc.lr_min:g}"
                             + (f" (Muon {tc.muon_lr or tc.lr_peak:g})" if tc.optimizer == "muon" else ""),
            "schedule": "one phase" if tc.phase1_frac >= 1 else f"two phases (x{tc.phase2_scale:g})",
            "warmup": f"{tc.warmup_frac:.0%}", "weight decay": tc.weight_decay, "betas": str(tc.betas),
            "batch (sequences x tokens)": f"{tc.batch_size} x {tc.block_size or mc.block_size}",
            "epochs": tc.epochs, "corpus (snippets)": f"{s.corpus_snippets:,}",
            "loss": "mean cross-entropy" if tc.state_loss_weight == 1 else
                    f"cross-entropy, state lists x{tc.state_loss_weight:g}",
        }

    paper = cols(get_scale("paper"))
    # what App. C does not state for pre-training: the `paper` scale's choice, marked
    for k, why in (("weight decay", "G.1's fine-tuning value"), ("betas", "G.1's fine-tuning value"),
                   ("dropout", "none here"),
                   ("linear biases", "G.1 fine-tunes biases, so the authors' model may have had them"),
                   ("tied input/output embeddings", "nanoGPT's")):
        paper[k] = f"{paper[k]} (not stated; {why})"
    return pd.DataFrame({"paper": paper, scale: cols(get_scale(scale))})


def lora_params(scale: str) -> pd.DataFrame:
    """LoRA's trainable parameters on the scale's model and on the paper's, at the configured
    rank and at r=32: the paper reports 2.2M for r=8 (G.1), which r=8 on the query/key/value,
    output and MLP projections of its model does not give; r=32 on them gives ~2.26M."""
    from tinytrace.train.sft import lora_param_count

    rank = get_scale(scale).sft.rank
    rows = [{"model": name, "rank r": r, "trainable parameters": lora_param_count(
                get_scale(name).model_config(), r), "shown in the results": name == scale and r == rank}
            for name in dict.fromkeys((scale, "paper")) for r in dict.fromkeys((rank, 32))]
    return pd.DataFrame(rows).set_index(["model", "rank r"])


def pipeline_outcomes(rejections: dict):
    """Generation attempts by outcome (accepted and each rejection reason), as a table. The
    generator's own rejections (a skeleton it gives up on) are never traced; ``attempts``
    counts the traced ones, so the shares are of both together and sum to 100%."""
    attempts = rejections.get("attempts", 0)
    rejected = {k: v for k, v in rejections.items() if k not in ("attempts", "unique") and v}
    accepted = attempts - sum(v for k, v in rejected.items() if k != "generator")
    rows = [{"outcome": "accepted", "snippets": accepted}]
    rows += [{"outcome": f"rejected: {k}", "snippets": v} for k, v in rejected.items()]
    df = pd.DataFrame(rows)
    total = attempts + rejected.get("generator", 0)
    df["% of attempts"] = (100 * df["snippets"] / max(total, 1)).round(2)
    return df.set_index("outcome")


def speed_table(speed: dict):
    """``tinytrace.bench.bench_generate`` output as a table (snippets per second, one core)."""
    names = {"generate_only": "generator only", "settrace": "generator + sys.settrace tracer",
             "fast": "generator + fast tracer", "pipeline": "full pipeline (filters, tokens, hash)"}
    return pd.DataFrame([{"stage": names[k], "accepted snippets / s (one core)": speed[k]}
                         for k in names if k in speed]).set_index("stage")



def _records(df) -> list[dict]:
    if any(n is not None for n in df.index.names):  # a named index is data: keep it
        df = df.reset_index()
    return json.loads(df.to_json(orient="records", default_handler=str))


def written(path) -> str:
    """Where a section's results went and what the runs, evaluations and corpora it used cost
    when they were made (the results' ``compute``), whether this execution made them or found
    them cached: what rerunning the section from nothing takes on the hardware that made them.
    (The robustness runs' per-epoch evaluations count in their training, as in the book.)"""
    used = json.loads(Path(path).read_text()).get("compute") or {}
    if not used.get("artifacts"):
        return f"results written to {path}"
    total, parts, unrecorded = cost_minutes([used])
    missing = (f"; {unrecorded} made before costs were recorded are not counted"
               if unrecorded else "")
    return (f"results written to {path}. The runs, evaluations and corpora this section used "
            f"cost {total} min when they were made ({parts} min of "
            f"training, evaluation and data{missing}), whether this execution made them or "
            f"found them cached.")


def _scale_config(scale: str) -> dict | None:
    try:
        return get_scale(scale).to_dict()
    except ValueError:
        return None


def write_results_json(stem: str, *, scale: str, seed: int, hardware: str, comparison,
                       results, results_dir=".", extra: dict | None = None) -> Path:
    """Write ``<results_dir>/<stem>.json``: scale, hardware, seed, date, the paper-vs-ours rows
    (a DataFrame or a list of them) and the results (a DataFrame, or a dict of name ->
    DataFrame). Written atomically."""
    if isinstance(results, pd.DataFrame):
        results = {stem: results}
    if isinstance(comparison, (list, tuple)):
        comparison = pd.concat(list(comparison), ignore_index=True)
    sec = NOTEBOOKS.get(stem)
    doc = {
        "notebook": stem,
        "title": sec.title if sec else stem,
        "paper_section": sec.paper if sec else "",
        "scale": scale,
        "hardware": hardware,
        "seed": seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tinytrace": versions()["tinytrace"],
        "git_commit": git_commit(),
        "code_dirty": code_dirty(),
        "python": versions()["python"],
        "scale_config": _scale_config(scale),
        # what the artifacts this notebook used cost when they were made, cached or not
        "compute": compute_used(),
        "paper_vs_ours": _records(comparison),
        "results": {k: _records(v) if isinstance(v, pd.DataFrame) else v for k, v in results.items()},
    }
    if extra:
        doc.update(extra)
    out = Path(results_dir) / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    return out
