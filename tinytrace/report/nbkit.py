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
from tinytrace.lang.config import GeneratorConfig, get_preset
from tinytrace.provenance import git_commit, hardware, versions

from .sections import NOTEBOOKS, Section
from .tables import (
    comparison,
    em_table,
    generator_comparison,
    ood_table,
    setup_comparison,
    show_comparison,
    table3,
    table4,
    wide,
)

__all__ = [
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
            f"{s.corpus_snippets:,}-snippet corpus, {s.train.epochs} epoch(s)). "
            "Compare trends with the paper, not numbers." +
            (" Smoke scale only checks that the code runs: its numbers mean nothing."
             if s.name == "smoke" else ""))


def banner(scale: str, hardware: str, seed: int) -> Markdown:
    """The line every notebook shows first: scale, hardware, seed and what they mean."""
    return Markdown(f"**Scale:** `{scale}` · **hardware:** {hardware} · **seed:** {seed}\n\n"
                    f"Scale `{scale}`: {scale_note(scale)}")


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


def pipeline_outcomes(rejections: dict):
    """Generation attempts by outcome (accepted and each rejection reason), as a table."""
    attempts = rejections.get("attempts", 0)
    rejected = {k: v for k, v in rejections.items() if k not in ("attempts", "unique") and v}
    accepted = attempts - sum(v for k, v in rejected.items() if k != "generator")
    rows = [{"outcome": "accepted", "snippets": accepted}]
    rows += [{"outcome": f"rejected: {k}", "snippets": v} for k, v in rejected.items()]
    df = pd.DataFrame(rows)
    df["% of traced attempts"] = (100 * df["snippets"] / max(attempts, 1)).round(2)
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
        "python": versions()["python"],
        "scale_config": _scale_config(scale),
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
