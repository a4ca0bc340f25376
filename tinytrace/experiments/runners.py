"""The paper's six experiments (Sec. 3.4, 4.1-4.4, App. D-G) as functions of a scale.

Each experiment returns a tidy table: one row per model x test set x condition, with exact
match (EM), the count, and the metrics that respond before EM does (teacher-forced per-step EM,
final-state match, state-value token accuracy). Every artifact comes from the cache
(:mod:`.cache`): the base model is trained once and reused by every section.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tinytrace.data import Pipeline, coverage_configs, read_split
from tinytrace.evaluate import METRICS
from tinytrace.lang.config import GeneratorConfig, get_preset
from tinytrace.lang.edits import EDIT_NAMES, edit_dataset
from tinytrace.model import count_params, load_checkpoint, match_params
from tinytrace.provenance import hardware
from tinytrace.train.sft import finetune

from .cache import _Context, _key, settings
from .scales import get_scale


def _device():
    """Where experiments evaluate: the GPU when one is visible (``run_experiment(device="cpu")``
    hides it), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(run_dir: Path):
    """A trained run's model, on the evaluation device (checkpoints load on the CPU)."""
    return load_checkpoint(run_dir).to(_device())


def _row(experiment: str, model: str, test_set: str, condition: str, result: dict, **extra) -> dict:
    row = {"experiment": experiment, "model": model, "test_set": test_set, "condition": condition}
    row.update({k: result.get(k) for k in METRICS})
    row.update(extra)
    return row


# --- 1. base model and OOD (Sec. 3.4, 4.3) ----------------------------------------------------------
def exp_base(ctx: _Context) -> list[dict]:
    run = ctx.base_run()
    model = _load(run)
    rows = []
    id_max = ctx.scale.generator("id").max_depth
    for test_set, corpus in (("id", ctx.base_corpus()), ("longer", ctx.test_set("longer")),
                             ("deeper", ctx.test_set("deeper"))):
        res = ctx.eval_set(model, run, corpus)
        extra = {}
        if test_set == "deeper":
            flags = [f for f in res["clip_candidates"] if f is not None]
            clipped = sum(1 for t, p in flags if t > id_max and p <= id_max)
            extra["clip_rate"] = clipped / len(flags) if flags else None
        rows.append(_row("base", "base", test_set, "-", res, **extra))
    return rows


# --- 2. ID robustness (Sec. 4.1, App. E) ------------------------------------------------------------
def exp_id_robustness(ctx: _Context) -> list[dict]:
    s = ctx.scale
    rows: list[dict] = []
    for frac in s.robustness_corpora:
        corpus = ctx.base_corpus(frac)
        n_train = int(s.corpus_snippets * frac)
        label = _count_label(n_train)
        test = read_split(*corpus)
        edited_full = {e: edit_dataset(test, e, seed=ctx.seed, config=s.generator("id"))
                       for e in EDIT_NAMES}  # each: records with the original `index`
        train = replace(s.train, epochs=s.robustness_epochs)
        run_dir, _ = ctx.cache.run_dir(s, corpus, s.model_config(), train, tag="id_robustness")

        def rows_path(epoch, _run=run_dir):
            return ctx.cache.root / f"{_run.name}-e{epoch}.rows.json"

        def per_epoch(epoch, model, accelerator, record, _label=label, _frac=frac,
                      _edited=edited_full, _test=test, _run=run_dir):
            """Evaluate after each epoch: the base test, each edit on the full test set
            (Fig. 12) and on the correctly traced snippets (Fig. 3)."""
            if not accelerator.is_main_process:
                return None
            tag = Path(f"{_run.name}-e{epoch}")
            common = dict(corpus=_label, corpus_snippets=int(s.corpus_snippets * _frac), epoch=epoch)
            base = ctx.eval(model, tag, _test, "base")
            out = [_row("id_robustness", "base", "id", "none", base, edit="none", subset="full",
                        **common)]
            correct = {i for i, ok in enumerate(base["correct"]) if ok}
            for name, recs in _edited.items():
                full = ctx.eval(model, tag, recs, f"full-{name}")
                out.append(_row("id_robustness", "base", "id", name, full, edit=name,
                                subset="full", **common))
                sub = [r for r in recs if r["index"] in correct]
                res = ctx.eval(model, tag, sub, f"correct-{name}") if sub else {"n": 0}
                out.append(_row("id_robustness", "base", "id", name, res, edit=name,
                                subset="correct", **common))
            rows_path(epoch).write_text(json.dumps(out) + "\n")
            return {"em": base["exact_match"]}

        run = ctx.cache.run(s, corpus, s.model_config(), callbacks=[per_epoch], train=train,
                            tag="id_robustness")
        last = s.robustness_epochs
        if not rows_path(last).exists():  # interrupted between the last checkpoint and its eval
            per_epoch(last, _load(run), _MainOnly(), {})
        for epoch in range(1, last + 1):
            if rows_path(epoch).exists():
                rows += json.loads(rows_path(epoch).read_text())
    return rows


class _MainOnly:
    is_main_process = True


def _count_label(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    if n >= 1_000:
        return f"{n / 1e3:g}K"
    return str(n)


# --- 3. pair coverage (Sec. 4.2, 4.2.1) ---------------------------------------------------------------
def exp_pair_coverage(ctx: _Context) -> list[dict]:
    s = ctx.scale
    rows = []
    for cov in coverage_configs(s.generator("id"), s.exclusion_pcts, s.scopes, seed=ctx.seed):
        corpus = ctx.base_corpus(s.coverage_corpus, gen=cov.allowed)
        run = ctx.cache.run(s, corpus, s.model_config(), tag=f"coverage-{cov.scope}-{cov.pct}")
        model = _load(run)
        common = dict(scope=cov.scope, exclusion_pct=cov.pct, n_forbidden=len(cov.pairs))
        condition, value = f"{cov.scope}-{cov.pct}", f"{cov.pct}%"
        rows.append(_row("pair_coverage", condition, "allowed", value,
                         ctx.eval_set(model, run, corpus), **common))
        if cov.excluded is not None:
            test = ctx.cache.test_set(cov.excluded, s.test_size, ctx.seed, s.context)
            rows.append(_row("pair_coverage", condition, "excluded", value,
                             ctx.eval_set(model, run, test), **common))
    return rows


# --- 4. depth curriculum (Sec. 4.3.1, App. F) -----------------------------------------------------------
def mix_corpus(parts: list[tuple[Path, str, int]], out: Path, seed: int = 0) -> tuple[Path, str]:
    """A training corpus made of the first ``n`` train examples of each part, shuffled; the
    validation and test splits of the first part are kept. Written like
    :func:`tinytrace.data.build` (Hub layout + token stream), atomically."""
    cfg = "data"
    if (out / cfg / "build.json").exists():
        return out, cfg
    tmp = out / f".{cfg}.incomplete"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "tokens").mkdir(parents=True)
    tables, pieces = [], []
    for folder, name, n in parts:
        files = sorted((folder / name).glob("train-*.parquet"))
        t = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
        have = t.num_rows if t is not None else 0
        if have < n:
            raise ValueError(f"{folder}/{name} has {have} train examples, {n} requested")
        if not n:
            continue
        tables.append(t.slice(0, n))
        stream = np.memmap(folder / name / "tokens" / "train.bin", dtype=np.uint8, mode="r")
        idx = np.load(folder / name / "tokens" / "train.idx.npy")
        ends = np.append(idx[1:], len(stream))
        pieces += [stream[a:b] for a, b in zip(idx[:n], ends[:n])]
    table = pa.concat_tables(tables)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    pq.write_table(table.take(order), tmp / "train-00000-of-00001.parquet", compression="zstd")
    lengths = np.array([len(pieces[i]) for i in order], dtype=np.int64)
    with open(tmp / "tokens" / "train.bin", "wb") as f:
        for i in order:
            f.write(pieces[i].tobytes())
    np.save(tmp / "tokens" / "train.idx.npy", np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    first = parts[0][0] / parts[0][1]
    for split in ("validation", "test"):
        for f in first.glob(f"{split}-*.parquet"):
            shutil.copy(f, tmp / f.name)
        for f in (first / "tokens").glob(f"{split}.*"):
            shutil.copy(f, tmp / "tokens" / f.name)
    info = {"config_name": cfg, "parts": [[str(p), c, n] for p, c, n in parts], "seed": seed,
            "splits": {"train": int(table.num_rows)}}
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / cfg)
    return out, cfg


def curriculum_counts(n_train: int, p: float, inject: list[str]) -> dict[str, int]:
    """Snippets of each part for p % injected (split evenly over the injected depths)."""
    k = round(n_train * p / 100)
    per = [k // len(inject) + (1 if i < k % len(inject) else 0) for i in range(len(inject))]
    return {"curriculum": n_train - k, **dict(zip(inject, per))}


def exp_depth_curriculum(ctx: _Context) -> list[dict]:
    s = ctx.scale
    inject = sorted(r for r in s.task if r.startswith("inject-"))
    tests = ["curriculum"] + sorted((r for r in s.task if r.startswith("depth-")),
                                    key=lambda r: int(r.split("-")[1]))
    base = ctx.base_corpus(s.curriculum_corpus, gen=s.generator("curriculum"))
    n_train = json.loads((base[0] / base[1] / "build.json").read_text())["splits"]["train"]
    extra = {r: ctx.cache.corpus(s.generator(r), n_train + 8, test_size=0, seed=ctx.seed,
                                 context=s.context) for r in inject} if max(s.curriculum_ps) else {}
    rows = []
    for p in s.curriculum_ps:
        counts = curriculum_counts(n_train, p, inject)
        # the curriculum corpus comes first (its validation/test splits are kept), even at p=100
        parts = [(base[0], base[1], counts["curriculum"])]
        parts += [(extra[r][0], extra[r][1], counts[r]) for r in inject if counts.get(r)]
        mixed = mix_corpus(parts, ctx.cache.root / f"mix-{_key([str(x) for x in parts])}",
                           seed=ctx.seed)
        run = ctx.cache.run(s, mixed, s.model_config(), tag=f"curriculum-{p}")
        model = _load(run)
        for role in tests:
            corpus = base if role == "curriculum" else ctx.test_set(role)
            res = ctx.eval_set(model, run, corpus)
            rows.append(_row("depth_curriculum", f"p={p}", s.generator(role).name, f"{p}%", res, p=p))
    return rows


# --- 5. SFT with LoRA (Sec. 4.4, App. G.1) -------------------------------------------------------------
def exp_sft_lora(ctx: _Context) -> list[dict]:
    s = ctx.scale
    base_run = ctx.base_run()
    tests = (("id", ctx.base_corpus()), ("deeper", ctx.test_set("deeper")),
             ("longer", ctx.test_set("longer")))
    rows = []
    pre = _load(base_run)
    for name, corpus in tests:
        rows.append(_row("sft_lora", "pre-trained", name, "-", ctx.eval_set(pre, base_run, corpus),
                         data_size=0, sft_epochs=0, trainable_params=0))
    for size in s.sft_sizes:
        data = ctx.cache.corpus(s.generator("id"), size + max(s.test_size // 4, 8), test_size=0,
                                validation_size=max(s.test_size // 4, 8), seed=ctx.seed + 7,
                                context=s.context)
        for epochs in s.sft_epochs:
            cfg = replace(s.sft, epochs=epochs, data_size=size, seed=ctx.seed)
            out = ctx.cache.root / f"sft-{_key([base_run.name, data[0].name, settings(cfg)])}"
            with ctx.cache.locked(out):
                summary = finetune(base_run, data[0], data[1], out, cfg,
                                   progress=ctx.cache.progress, resume=True)
            model = _load(out)
            for name, corpus in tests:
                rows.append(_row("sft_lora", "fine-tuned", name, f"{size} x {epochs}",
                                 ctx.eval_set(model, out, corpus), data_size=size,
                                 sft_epochs=epochs, trainable_params=summary["trainable_params"],
                                 best_val_loss=summary.get("best_val_loss")))
    return rows


# --- 6. positional encodings (Sec. 4.4, App. G.2) --------------------------------------------------------
def exp_pe_ablation(ctx: _Context) -> list[dict]:
    """The base model is the variant with its own encoding (APE at paper scale); the others get
    the n_embd that matches its parameter count (G.2) and are trained on the same corpus."""
    s = ctx.scale
    base_cfg = s.model_config()
    rows = []
    for pe in s.pe_variants:
        if pe == base_cfg.pe:
            cfg, run = base_cfg, ctx.base_run()
        else:
            cfg = match_params(s.model_config(pe=pe), count_params(base_cfg))
            run = ctx.cache.run(s, ctx.base_corpus(), cfg, tag=f"pe-{pe}")
        model = _load(run)
        params = model.num_params()
        for name, corpus in (("id", ctx.base_corpus()), ("longer", ctx.test_set("longer")),
                             ("deeper", ctx.test_set("deeper"))):
            rows.append(_row("pe_ablation", pe, name, "-", ctx.eval_set(model, run, corpus),
                             params=params, n_embd=cfg.n_embd))
    return rows


RUNNERS = {
    "base": exp_base,
    "id_robustness": exp_id_robustness,
    "pair_coverage": exp_pair_coverage,
    "depth_curriculum": exp_depth_curriculum,
    "sft_lora": exp_sft_lora,
    "pe_ablation": exp_pe_ablation,
}
EXPERIMENTS = list(RUNNERS)  # in the paper's order


def run_experiment(name: str, scale="smoke", out=None, cache_dir="cache", seed: int = 0,
                   device=None, progress: bool = True):
    """Run one experiment at a scale; returns the tidy results table (and writes
    ``out/results.csv`` plus ``out/config.json`` when ``out`` is given)."""
    if name not in RUNNERS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if device is not None and str(device).startswith("cpu"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sc = get_scale(scale)
    random.seed(seed)
    t0 = time.time()
    ctx = _Context(sc, cache_dir, seed, progress)
    df = pd.DataFrame(RUNNERS[name](ctx))
    df.insert(len(df.columns), "scale", sc.name)
    df.insert(len(df.columns), "hardware", hardware())
    seconds = time.time() - t0
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "results.csv", index=False)
        (out / "config.json").write_text(json.dumps(
            {"experiment": name, "scale": sc.to_dict(), "seed": seed, "seconds": round(seconds, 1),
             "hardware": hardware(), "cache_dir": str(cache_dir)}, indent=2, default=str) + "\n")
    return df


def train_log(run_dir):
    """The training log of a run as a DataFrame (step, loss, lr, tokens_per_s, epoch)."""
    recs = [json.loads(line) for line in Path(run_dir, "log.jsonl").read_text().splitlines()]
    return pd.DataFrame([r for r in recs if r.get("event") == "step"])


def base_run_dir(scale="smoke", cache_dir="cache", seed: int = 0) -> Path:
    """The cached base-model run of a scale (trained on first use)."""
    return _Context(get_scale(scale), cache_dir, seed, progress=False).base_run()


def generator_stats(preset="base", n: int = 2000, seed: int = 0):
    """Per-snippet statistics of ``n`` accepted snippets, and the rejection counts."""
    cfg = preset if isinstance(preset, GeneratorConfig) else get_preset(preset)
    stats: Counter = Counter()
    cols = Pipeline(cfg).records(random.Random(seed), n, stats)
    keys = ("n_statements", "max_depth", "n_steps", "n_tokens")
    return pd.DataFrame({k: cols[k] for k in keys}), dict(stats)
