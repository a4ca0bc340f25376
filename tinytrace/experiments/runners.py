"""The paper's six experiments (Sec. 3.4, 4.1-4.4, App. D-G) as functions of a scale.

Each experiment returns a tidy table: one row per model x test set x condition, with exact
match (EM), the count, and the metrics that respond before EM does (teacher-forced per-step EM,
final-state match, state-value token accuracy). Every artifact comes from the cache
(:mod:`.cache`): the base model is trained once and reused by every section.

Each experiment also lists its training runs (:func:`training_runs`), the same functions its
runner trains them with, so each run can be trained on its own (another machine, a cluster
job) into a shared cache that the experiment then reuses. The base run is listed by ``base``
(and by ``sft_lora``, which starts from it); the other experiments that use it (the pair
coverage's reference, the depth curriculum's section) expect it trained first. An
experiment's evaluation may also need a run that another experiment or scale trains
(:func:`prerequisites`): the pair coverage's reference is the base run of its scale, or, where
the scale trains the exclusion runs for other epochs than its base run (``cpu-long``), the
base run of the scale whose recipe has those epochs (``cpu``).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tinytrace.data import Pipeline, coverage_configs, read_split
from tinytrace.evaluate import METRICS
from tinytrace.lang.config import GeneratorConfig, get_preset
from tinytrace.lang.edits import EDIT_NAMES, edit_dataset
from tinytrace.model import count_params, match_params
from tinytrace.provenance import hardware
from tinytrace.train.common import check_device
from tinytrace.train.sft import finetune

from .analysis import FAILURE_CLASSES, clip_rate
from .cache import (USED, LazyModel, NotTrained, WeightsMissing, _Context, _key, _run_seconds, _use,
                    settings, subset)
from .records import forget, weightless
from .scales import SCALES, SHIPPED, get_scale, tokens_per_example


def _device():
    """Where experiments evaluate: the GPU when one is visible (``run_experiment(device="cpu")``
    hides it), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(run_dir: Path) -> LazyModel:
    """A trained run's model on the evaluation device, loaded only when an evaluation is not
    cached (checkpoints load on the CPU)."""
    return LazyModel(run_dir, _device())


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
        clip = ("max_indent",) if test_set == "deeper" else ()  # only the deeper set's clipping
        res = ctx.eval_set(model, run, corpus, require=("failure", *clip))
        # where each failed trace first goes wrong (analysis.FAILURE_CLASSES)
        kinds = Counter(k for k in res["failure"] if k)
        extra = {f"fail: {k}": kinds[k] for k in FAILURE_CLASSES}
        if test_set == "deeper":
            extra["clip_rate"] = clip_rate(res, id_max)  # the paper's clipping (Sec. 4.3)
        rows.append(_row("base", "base", test_set, "-", res, **extra))
    return rows


# --- 2. ID robustness (Sec. 4.1, App. E) ------------------------------------------------------------
def _robustness_run(ctx: _Context, frac: float) -> Path:
    """Train the run on ``frac`` of the base corpus, evaluating after each epoch: the base
    test, each edit on the full test set (Fig. 12) and on the correctly traced snippets
    (Fig. 3), one rows file per epoch (:func:`_robustness_rows`)."""
    s = ctx.scale
    corpus = ctx.base_corpus(frac)
    label = _count_label(int(s.corpus_snippets * frac))
    test = read_split(*corpus)
    edited = _edited(ctx, test)
    train = s.recipe(s.robustness_epochs)
    run_dir, _ = ctx.cache.run_dir(s, corpus, s.model_config(), train, tag="id_robustness")

    def per_epoch(epoch, model, accelerator, record):
        if not accelerator.is_main_process:
            return None
        tag = Path(f"{run_dir.name}-e{epoch}")
        common = dict(corpus=label, corpus_snippets=int(s.corpus_snippets * frac), epoch=epoch)
        base = ctx.eval(model, tag, test, "base")
        out = [_row("id_robustness", "base", "id", "none", base, edit="none", subset="full",
                    **common)]
        correct = {i for i, ok in enumerate(base["correct"]) if ok}
        for name, recs in edited.items():
            full = ctx.eval(model, tag, recs, f"full-{name}", require=("counts",))
            out.append(_row("id_robustness", "base", "id", name, full, edit=name,
                            subset="full", **common))
            # the correctly traced snippets' scores, read off the full set's evaluation
            res = subset(full, [k for k, r in enumerate(recs) if r["index"] in correct])
            out.append(_row("id_robustness", "base", "id", name, res, edit=name,
                            subset="correct", **common))
        _robustness_rows(ctx, run_dir, epoch).write_text(json.dumps(out) + "\n")
        return {"em": base["exact_match"]}

    run = ctx.cache.run(s, corpus, s.model_config(), callbacks=[per_epoch], train=train,
                        tag="id_robustness")
    last = s.robustness_epochs
    if not _robustness_rows(ctx, run, last).exists():  # interrupted between the last checkpoint and its eval
        per_epoch(last, _load(run), _MainOnly(), {})
    return run


def _robustness_rows(ctx: _Context, run_dir: Path, epoch: int) -> Path:
    return ctx.cache.root / f"{run_dir.name}-e{epoch}.rows.json"


def _edited(ctx: _Context, test) -> dict[str, list]:
    """Each edit applied to the test split: records with the original ``index``, only the
    snippets the edit applies to."""
    return {e: edit_dataset(test, e, seed=ctx.seed, config=ctx.scale.generator("id"))
            for e in EDIT_NAMES}


def exp_id_robustness(ctx: _Context) -> list[dict]:
    rows: list[dict] = []
    for frac in ctx.scale.robustness_corpora:
        before = set(USED)
        run = _robustness_run(ctx, frac)
        test = read_split(*ctx.base_corpus(frac))
        applies = {e: [r["index"] for r in recs] for e, recs in _edited(ctx, test).items()}
        for epoch in range(1, ctx.scale.robustness_epochs + 1):
            if not _robustness_rows(ctx, run, epoch).exists():
                continue
            # Fig. 12 like for like: the unaltered test on the snippets each edit applies to
            base = ctx.eval(None, Path(f"{run.name}-e{epoch}"), test, "base")["correct"]
            for r in json.loads(_robustness_rows(ctx, run, epoch).read_text()):
                if r["subset"] == "full" and r["edit"] != "none":
                    idx = applies[r["edit"]]
                    r["base_same_subset"] = sum(base[i] for i in idx) / len(idx) if idx else None
                    r["n_skipped"] = len(test) - len(idx)
                rows.append(r)
        for k in set(USED) - before:  # evaluated while the run trained: its seconds count them
            if USED[k][0] == "evaluate":
                del USED[k]
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
def _coverages(s, seed: int):
    """One pair-coverage run per scope and exclusion percentage (scope-major)."""
    return coverage_configs(s.generator("id"), s.exclusion_pcts, s.scopes, seed=seed)


def _coverage_draws(s, seed: int) -> list[tuple[int, list]]:
    """``(seed, coverage configs)`` of each draw: the experiment's seed with every point, then
    the scale's drawn points (``coverage_drawn``) at each further seed (not in the paper)."""
    return [(seed, _coverages(s, seed))] + [
        (seed + d, [c for c in _coverages(s, seed + d) if f"{c.scope}-{c.pct}" in s.coverage_drawn])
        for d in range(1, s.coverage_draws)]


def _coverage_corpus(ctx: _Context, cov) -> tuple[Path, str]:
    return ctx.base_corpus(ctx.scale.coverage_corpus, gen=cov.allowed)


def _coverage_run(ctx: _Context, cov) -> Path:
    s = ctx.scale
    return ctx.cache.run(s, _coverage_corpus(ctx, cov), s.model_config(),
                         train=s.recipe(s.coverage_epochs), tag=f"coverage-{cov.scope}-{cov.pct}")


def _coverage_reference(ctx: _Context) -> Path:
    """The base recipe on the whole base corpus (every pair) for as many epochs as the
    exclusion runs: the base run itself unless the scale gives them other epochs."""
    s = ctx.scale
    return ctx.cache.run(s, ctx.base_corpus(), s.model_config(), train=s.recipe(s.coverage_epochs))


def _base_inputs(s, train) -> tuple:
    """What the base run of scale ``s`` with recipe ``train`` is keyed by
    (:meth:`_Context.base_run`): the model, the recipe's key fields and the base corpus's
    generator, size, test size and context."""
    return (s.model_config().to_dict(), settings(train), s.generator("id").to_dict(),
            s.corpus_snippets, s.test_size, s.context)


def _coverage_prerequisite(s) -> Prerequisite | None:
    """The first draw's reference (:func:`_coverage_reference`) as the base run of a scale:
    ``s``'s own, or that of a scale whose base run is the same model, recipe and corpus (at
    `cpu-long`, whose exclusion runs train for 1 epoch: `cpu`'s). None where no scale's base
    run is it: the experiment then trains it as its own run."""
    want = _base_inputs(s, s.recipe(s.coverage_epochs))
    for t in [s, *SCALES.values()]:
        if _base_inputs(t, t.train) == want:
            return Prerequisite(f"the base model of scale {t.name}", "base", t.name, 0)
    return None


def _first_reference(ctx: _Context) -> Path:
    """The first draw's reference; where the cache trains nothing and it is not trained, the
    error names the run of another experiment or scale that it is."""
    try:
        return _coverage_reference(ctx)
    except NotTrained as e:
        need = None if isinstance(e, WeightsMissing) else _coverage_prerequisite(ctx.scale)
        if need is None:
            raise
        raise PrerequisiteMissing(e.run, need) from None


def _at_draw(ctx: _Context, fn: Callable, draw: int, **kw) -> Path:
    """``fn`` at the seed ``draw`` after ctx's: a training run of a further draw."""
    return fn(ctx.at_seed(ctx.seed + draw), **kw)


def _coverage_plan(s, seed: int) -> list:
    """The runner's order: each draw's exclusion runs, then (further draws) its reference."""
    runs = []
    for d, (at, covs) in enumerate(_coverage_draws(s, seed)):
        runs += [TrainingRun(f"coverage-{c.scope}-{c.pct}" + (f"-seed{at}" if d else ""),
                             partial(_at_draw, fn=_coverage_run, draw=d, cov=c)) for c in covs]
        if d and covs:
            runs.append(TrainingRun(f"coverage-reference-seed{at}",
                                    partial(_at_draw, fn=_coverage_reference, draw=d)))
    return runs


def exp_pair_coverage(ctx: _Context) -> list[dict]:
    """Each exclusion run on its allowed-pairs and excluded-pairs test sets (Sec. 4.2, 4.2.1);
    then, not in the paper, the reference model (:func:`_coverage_reference`: the base recipe
    on the whole base corpus, every pair included, for as many epochs as the exclusion runs;
    a base model, :func:`_coverage_prerequisite`) on each excluded-pairs test set (test_set
    ``excluded-base``): what a model that saw the pairs traces of the same snippets, every one
    of which executes an `x = u op v`. The paper's base model traces 100% of its ID test, so
    its 80% line needs no such reference; a smaller model's does. The reference run is a
    prerequisite (:func:`prerequisites`; trained here if missing, not one of
    :func:`training_runs`); an evaluate-only pass (:func:`evaluate_trained`, a GPU slot's
    training unit, which does not carry the base weights) leaves these rows to the section.

    Where the scale draws some points more than once (``coverage_drawn``, not in the paper),
    each further draw (column ``seed``) adds the same rows for those points, after the first
    draw's, with its own reference, a training run of :func:`training_runs`."""
    s = ctx.scale
    rows = []
    for draw, (seed, covs) in enumerate(_coverage_draws(s, ctx.seed)):
        c = ctx.at_seed(seed)
        tests = []
        for cov in covs:
            corpus = _coverage_corpus(c, cov)
            run = _coverage_run(c, cov)
            model = _load(run)
            common = dict(scope=cov.scope, exclusion_pct=cov.pct, n_forbidden=len(cov.pairs), seed=seed)
            condition, value = f"{cov.scope}-{cov.pct}", f"{cov.pct}%"
            rows.append(_row("pair_coverage", condition, "allowed", value,
                             c.eval_set(model, run, corpus), **common))
            if cov.excluded is not None:
                test = c.cache.test_set(cov.excluded, s.test_size, seed, s.context)
                rows.append(_row("pair_coverage", condition, "excluded", value,
                                 c.eval_set(model, run, test), **common))
                tests.append((test, common, value))
        if tests and (draw or not ctx.evaluate_only):
            ref = _coverage_reference(c) if draw else _first_reference(c)
            model = _load(ref)
            rows += [_row("pair_coverage", "reference", "excluded-base", value,
                          c.eval_set(model, ref, test), **common) for test, common, value in tests]
    return rows


# --- 4. depth curriculum (Sec. 4.3.1, App. F) -----------------------------------------------------------
# Bytes a mixed corpus is written in, about: a `take` of that many rows (a parquet row group)
# stays far below the 2 GiB that a `string` column's 32-bit offsets can address.
WRITE_BYTES = 2**28


def _wide(table: pa.Table) -> pa.Table:
    """``table`` with 64-bit string offsets: a `paper`-scale corpus's traces (3M rows of about
    770 bytes) pass 2 GiB, where `take` on 32-bit offsets fails."""
    return table.cast(pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f
                                 for f in table.schema]))


def _examples(folder: Path, name: str, split: str, n: int | None, exclude) -> tuple:
    """The first ``n`` (None: all) examples of a split whose ``sha256`` is not in ``exclude``:
    their table (with wide strings, :func:`_wide`) and their token pieces."""
    files = sorted((folder / name).glob(f"{split}-*.parquet"))
    if not files:
        return None, []
    t = _wide(pa.concat_tables([pq.read_table(f) for f in files]))
    keep = [i for i, h in enumerate(t.column("sha256").to_pylist()) if h not in exclude]
    if n is not None:
        if len(keep) < n:
            raise ValueError(f"{folder}/{name} has {len(keep)} {split} examples outside the "
                             f"excluded sets, {n} requested")
        keep = keep[:n]
    stream = np.memmap(folder / name / "tokens" / f"{split}.bin", dtype=np.uint8, mode="r")
    idx = np.load(folder / name / "tokens" / f"{split}.idx.npy")
    ends = np.append(idx[1:], len(stream))
    return t.take(keep), [stream[idx[i]:ends[i]] for i in keep]


def _write_split(tmp: Path, split: str, table, pieces: list, order, schema: pa.Schema) -> None:
    """The rows ``order`` of ``table`` (wide strings) and their token pieces, written as one
    split in ``schema`` (the corpora's own), about :data:`WRITE_BYTES` at a time."""
    table = table.combine_chunks()  # once: a take from many chunks joins them first
    rows = max(1, WRITE_BYTES * table.num_rows // max(table.nbytes, 1))
    with pq.ParquetWriter(tmp / f"{split}-00000-of-00001.parquet", schema,
                          compression="zstd") as w:
        for i in range(0, len(order), rows):
            w.write_table(table.take(order[i:i + rows]).cast(schema))
    lengths = np.array([len(pieces[i]) for i in order], dtype=np.int64)
    with open(tmp / "tokens" / f"{split}.bin", "wb") as f:
        for i in order:
            f.write(pieces[i].tobytes())
    np.save(tmp / "tokens" / f"{split}.idx.npy", np.concatenate([[0], np.cumsum(lengths)[:-1]]))


def mix_corpus(parts: list[tuple[Path, str, int]], out: Path, seed: int = 0,
               exclude: frozenset = frozenset()) -> tuple[Path, str]:
    """A training corpus made of the first ``n`` train examples of each part, shuffled; the
    validation and test splits of the first part are kept. ``exclude``: snippet hashes
    (``sha256``) left out of every split, e.g. the test sets a model is evaluated on. Written
    like :func:`tinytrace.data.build` (Hub layout + token stream), atomically."""
    cfg = "data"
    if (out / cfg / "build.json").exists():
        return out, cfg
    tmp = out / f".{cfg}.incomplete"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "tokens").mkdir(parents=True)
    tables, pieces = [], []
    for folder, name, n in parts:
        if not n:
            continue
        t, p = _examples(folder, name, "train", n, exclude)
        if t is None:
            raise ValueError(f"{folder}/{name} has 0 train examples, {n} requested")
        tables.append(t)
        pieces += p
    schema = pq.read_schema(next((parts[0][0] / parts[0][1]).glob("train-*.parquet")))
    table = pa.concat_tables(tables)
    _write_split(tmp, "train", table, pieces, np.random.default_rng(seed).permutation(table.num_rows),
                 schema)
    splits = {"train": int(table.num_rows)}
    for split in ("validation", "test"):
        t, p = _examples(parts[0][0], parts[0][1], split, None, exclude)
        if t is not None:
            _write_split(tmp, split, t, p, np.arange(t.num_rows), schema)
            splits[split] = int(t.num_rows)
    info = {"config_name": cfg, "parts": [[str(p), c, n] for p, c, n in parts], "seed": seed,
            "excluded_hashes": len(exclude), "splits": splits}
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / cfg)
    return out, cfg


def curriculum_counts(n_train: int, p: float, inject: list[str]) -> dict[str, int]:
    """Snippets of each part for p % injected (split evenly over the injected depths)."""
    k = round(n_train * p / 100)
    per = [k // len(inject) + (1 if i < k % len(inject) else 0) for i in range(len(inject))]
    return {"curriculum": n_train - k, **dict(zip(inject, per))}


def _curriculum_corpora(ctx: _Context):
    """The curriculum corpus, the corpora of the injected depths (when some p > 0) and the
    curriculum corpus's train size: what every curriculum run mixes from."""
    s = ctx.scale
    base = ctx.base_corpus(s.curriculum_corpus, gen=s.generator("curriculum"))
    n_train = json.loads((base[0] / base[1] / "build.json").read_text())["splits"]["train"]
    # each injected depth as many snippets as the largest p takes of it (half the corpus at
    # p = 100), and a few more
    inject = _inject_roles(s)
    most = curriculum_counts(n_train, max(s.curriculum_ps), inject)
    extra = {r: ctx.cache.corpus(s.generator(r), most[r] + 8, test_size=0, seed=ctx.seed,
                                 context=s.context)
             for r in inject} if max(s.curriculum_ps) else {}
    return base, extra, n_train


def _inject_roles(s) -> list[str]:
    return sorted(r for r in s.task if r.startswith("inject-"))


def _curriculum_run(ctx: _Context, p) -> Path:
    """Train on the curriculum corpus with p % of it replaced by the injected depths."""
    s = ctx.scale
    inject = _inject_roles(s)
    base, extra, n_train = _curriculum_corpora(ctx)
    counts = curriculum_counts(n_train, p, inject)
    # the curriculum corpus comes first (its validation/test splits are kept), even at p=100
    parts = [(base[0], base[1], counts["curriculum"])]
    parts += [(extra[r][0], extra[r][1], counts[r]) for r in inject if counts.get(r)]
    mixed = mix_corpus(parts, ctx.cache.root / f"mix-{mix_key(parts)}", seed=ctx.seed)
    return ctx.cache.run(s, mixed, s.model_config(), train=s.recipe(s.curriculum_epochs),
                         tag=f"curriculum-{p}")


def mix_key(parts) -> str:
    """The cache key of a mixed corpus: its parts' corpus names, configs and counts, not their
    folders' paths, so a cache moved elsewhere keeps its curriculum runs."""
    return _key([str((Path(folder).name, config, n)) for folder, config, n in parts])


def exp_depth_curriculum(ctx: _Context) -> list[dict]:
    s = ctx.scale
    tests = ["curriculum"] + sorted((r for r in s.task if r.startswith("depth-")),
                                    key=lambda r: int(r.split("-")[1]))
    base, _, _ = _curriculum_corpora(ctx)
    injected = [s.generator(r).max_depth for r in _inject_roles(s)]
    rows = []
    for p in s.curriculum_ps:
        run = _curriculum_run(ctx, p)
        model = _load(run)
        # the deepest nesting this run trained on (beyond the paper: do the deeper sets'
        # failures clip to it, as the base model's clip to the ID depth, or to one level
        # deeper, the X + 1 of Sec. 4.3.1?)
        trained = max([s.generator("curriculum").max_depth] + (injected if p else []))
        for role in tests:
            if role == "curriculum":
                res = ctx.eval_set(model, run, base)
                extra = {}
            else:
                res = ctx.eval_set(model, run, ctx.test_set(role), require=("max_indent",))
                extra = {"clip_rate": clip_rate(res, trained),
                         "clip_rate_next": clip_rate(res, trained + 1)}
            rows.append(_row("depth_curriculum", f"p={p}", s.generator(role).name, f"{p}%", res,
                             p=p, trained_depth=trained, **extra))
    return rows


# --- 5. SFT with LoRA (Sec. 4.4, App. G.1) -------------------------------------------------------------
def exp_sft_lora(ctx: _Context) -> list[dict]:
    s = ctx.scale
    base_run = ctx.base_run()
    tests = _sft_tests(ctx)
    rows = []
    pre = _load(base_run)
    for name, corpus in tests:
        rows.append(_row("sft_lora", "pre-trained", name, "-", ctx.eval_set(pre, base_run, corpus),
                         data_size=0, sft_epochs=0, trainable_params=0))
    for size in s.sft_sizes:
        for epochs in s.sft_epochs:
            out, summary = _sft_finetune(ctx, size, epochs)
            model = _load(out)
            for name, corpus in tests:
                rows.append(_row("sft_lora", "fine-tuned", name, f"{size} x {epochs}",
                                 ctx.eval_set(model, out, corpus), data_size=size,
                                 sft_epochs=epochs, trainable_params=summary["trainable_params"],
                                 best_val_loss=summary.get("best_val_loss")))
    return rows


def _sft_tests(ctx: _Context) -> tuple:
    """The test sets the fine-tuned models are evaluated on (Table 3)."""
    return (("id", ctx.base_corpus()), ("deeper", ctx.test_set("deeper")),
            ("longer", ctx.test_set("longer")))


def _sft_data(ctx: _Context, size: int) -> tuple[Path, str]:
    """The fine-tuning corpus of ``size`` examples (shared by every number of epochs), its
    train and validation splits without any snippet of the test sets it is evaluated on."""
    s = ctx.scale
    # as many as the runs validate on, and room in both splits for the test sets' snippets
    val = max(s.test_size // 4, s.sft.val_examples + s.sft.val_examples // 16 + 8)
    spare = size // 16 + 64
    raw = ctx.cache.corpus(s.generator("id"), size + spare + val, test_size=0,
                           validation_size=val, seed=ctx.seed + 7, context=s.context)
    exclude = frozenset(r["sha256"] for _, corpus in _sft_tests(ctx)
                        for r in read_split(*corpus, columns=("sha256",)))
    out = ctx.cache.root / f"sft-data-{_key([raw[0].name, size, sorted(exclude)])}"
    with ctx.cache.locked(out):
        return mix_corpus([(raw[0], raw[1], size)], out, seed=ctx.seed, exclude=exclude)


def _sft_finetune(ctx: _Context, size: int, epochs: int) -> tuple[Path, dict]:
    """Fine-tune the base model on ``size`` examples for ``epochs``: the run folder and the
    summary (the saved one when the run is done)."""
    s = ctx.scale
    base_run, data = ctx.base_run(), _sft_data(ctx, size)
    cfg = replace(s.sft, epochs=epochs, data_size=size, seed=ctx.seed)
    out = ctx.cache.root / f"sft-{_key([base_run.name, data[0].name, settings(cfg)])}"
    if not ctx.cache.train_missing and not (out / "done.json").exists():
        raise NotTrained(out)
    if not (out / "done.json").exists() and not (base_run / "model.safetensors").exists():
        raise WeightsMissing(base_run)  # it starts from the base model's weights
    with ctx.cache.locked(out):
        summary = finetune(base_run, data[0], data[1], out, cfg, progress=ctx.cache.progress,
                           resume=True)
    _use("train", out, _run_seconds(out))
    return out, summary


def _sft_run(ctx: _Context, size: int, epochs: int) -> Path:
    return _sft_finetune(ctx, size, epochs)[0]


def _sft_first(ctx: _Context) -> Path:
    """What every fine-tuning run needs: the base model and the fine-tuning corpora."""
    for size in ctx.scale.sft_sizes:
        _sft_data(ctx, size)
    return ctx.base_run()


# --- 6. positional encodings (Sec. 4.4, App. G.2) --------------------------------------------------------
def exp_pe_ablation(ctx: _Context) -> list[dict]:
    """Each encoding on the scale's model, APE as the reference and the others with the n_embd
    that matches its parameter count (G.2), all trained on the same corpus."""
    s = ctx.scale
    rows = []
    for pe in s.pe_variants:
        cfg, run = _pe_config(s, pe), _pe_run(ctx, pe)
        model = _load(run)
        params = count_params(cfg)  # closed form: the weights may not be here (GPU slots)
        for name, corpus in (("id", ctx.base_corpus()), ("longer", ctx.test_set("longer")),
                             ("deeper", ctx.test_set("deeper"))):
            rows.append(_row("pe_ablation", pe, name, "-", ctx.eval_set(model, run, corpus),
                             params=params, n_embd=cfg.n_embd))
    return rows


def _pe_config(s, pe: str):
    """The scale's model with encoding ``pe``; APE is the reference at every scale (G.2), the
    others get the n_embd that matches its parameter count."""
    ref = s.model_config(pe="ape")
    return ref if pe == "ape" else match_params(s.model_config(pe=pe), count_params(ref))


def _pe_is_base(s, pe: str) -> bool:
    """The PE run of ``pe`` is the base run: its model and the whole base corpus."""
    return _pe_config(s, pe) == s.model_config() and s.pe_corpus >= 1


def _pe_run(ctx: _Context, pe: str) -> Path:
    """The base run where it is this variant's model and the PE runs use the whole base
    corpus, else a run on ``pe_corpus`` of the base corpus."""
    s = ctx.scale
    if _pe_is_base(s, pe):
        return ctx.base_run()
    return ctx.cache.run(s, ctx.base_corpus(s.pe_corpus), _pe_config(s, pe), tag=f"pe-{pe}")


RUNNERS = {
    "base": exp_base,
    "id_robustness": exp_id_robustness,
    "pair_coverage": exp_pair_coverage,
    "depth_curriculum": exp_depth_curriculum,
    "sft_lora": exp_sft_lora,
    "pe_ablation": exp_pe_ablation,
}
EXPERIMENTS = list(RUNNERS)  # in the paper's order


# --- training runs on their own ----------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRun:
    """One training run of an experiment. ``train(ctx)`` trains it into ``ctx``'s cache (or
    resumes it, or finds it done) with the function the experiment's runner uses, so the
    runner then reuses it; it returns the run's folder. ``after_first``: the run needs what
    the experiment's first run makes (the base model, or corpora several runs share, which two
    jobs must not build at once), so it starts only once that run has finished."""

    label: str
    train: Callable[[_Context], Path]
    after_first: bool = False


@dataclass(frozen=True)
class Prerequisite:
    """A run that an experiment's evaluation needs but another experiment or scale trains:
    run ``index`` of ``experiment`` at ``scale`` (its ``--list-runs``), called ``label``."""

    label: str
    experiment: str
    scale: str
    index: int = 0


class PrerequisiteMissing(NotTrained):
    """A :class:`Prerequisite` is not trained, and the cache trains nothing."""

    def __init__(self, run: Path, needed: Prerequisite):
        Exception.__init__(self, f"{needed.label} ({run.name}) is not trained")
        self.run, self.needed = run, needed


def _check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`EXPERIMENTS`."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")


def _first_then_rest(runs: list[tuple[str, Callable]]) -> list[TrainingRun]:
    return [TrainingRun(label, fn, after_first=i > 0) for i, (label, fn) in enumerate(runs)]


PLANS: dict[str, Callable] = {
    "base": lambda s, seed: [TrainingRun("base", _Context.base_run)],
    "id_robustness": lambda s, seed: [
        TrainingRun(f"robustness-{_count_label(int(s.corpus_snippets * f))}",
                    partial(_robustness_run, frac=f)) for f in s.robustness_corpora],
    "pair_coverage": _coverage_plan,
    "depth_curriculum": lambda s, seed: _first_then_rest(
        [(f"curriculum-{p}", partial(_curriculum_run, p=p)) for p in s.curriculum_ps]),
    "sft_lora": lambda s, seed: _first_then_rest(
        [("base", _sft_first)] + [(f"sft-{n}x{e}", partial(_sft_run, size=n, epochs=e))
                                  for n in s.sft_sizes for e in s.sft_epochs]),
    "pe_ablation": lambda s, seed: _first_then_rest(
        [(f"pe-{pe}", partial(_pe_run, pe=pe)) for pe in s.pe_variants]),
}


def training_runs(name: str, scale="smoke", seed: int = 0) -> list[TrainingRun]:
    """The training runs of experiment ``name`` at ``scale``, in the order its runner trains
    them; nothing is built or trained."""
    _check_name(name)
    return PLANS[name](get_scale(scale), seed)


def prerequisites(name: str, scale="smoke", seed: int = 0) -> list[Prerequisite]:
    """The runs of other experiments or scales that the evaluation of experiment ``name`` at
    ``scale`` needs, not among its :func:`training_runs`: the pair coverage's first reference,
    a base model (:func:`_coverage_prerequisite`). Nothing is built or trained."""
    _check_name(name)
    s = get_scale(scale)
    if name == "pair_coverage" and any(c.excluded is not None for c in _coverages(s, seed)):
        need = _coverage_prerequisite(s)
        return [need] if need is not None else []
    return []


def _hide_gpu(device) -> None:
    """``device="cpu"``: hide the GPUs from this process (and what it starts); "cuda": one
    must be visible; None: the GPU when one is visible."""
    check_device(device)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run_training(name: str, index: int, scale="smoke", cache_dir="cache", seed: int = 0,
                 device=None, progress: bool = True) -> Path:
    """Train only run ``index`` of :func:`training_runs` into ``cache_dir`` (with what it needs
    and nothing else); returns its folder. The experiment run later with the same cache, scale
    and seed reuses it."""
    runs = training_runs(name, scale, seed)
    if not 0 <= index < len(runs):
        raise ValueError(f"{name} at scale {get_scale(scale).name} has {len(runs)} training runs "
                         f"(0 ... {len(runs) - 1}), not {index}")
    _hide_gpu(device)
    random.seed(seed)
    return runs[index].train(_Context(get_scale(scale), cache_dir, seed, progress))


def evaluate_trained(name: str, scale="smoke", cache_dir="cache", seed: int = 0, device=None,
                     progress: bool = True) -> str:
    """Evaluate (into the cache) the runs of ``name`` that are trained, in its runner's order,
    training nothing: it stops at the first run that is not trained. A GPU slot's training
    unit calls it after its run, so that later units find the evaluations cached and need not
    carry the weights. Returns what it did, in words."""
    _check_name(name)
    _hide_gpu(device)
    random.seed(seed)
    try:
        RUNNERS[name](_Context(get_scale(scale), cache_dir, seed, progress, train_missing=False,
                               evaluate_only=True))
    except NotTrained as e:
        why = "whose weights are not here" if isinstance(e, WeightsMissing) else "which is not trained"
        return f"evaluated the trained runs of {name} before {e.run.name}, {why}"
    return f"evaluated every run of {name}"


def _rows(runner: Callable, ctx: _Context) -> list[dict]:
    """``runner``'s rows. A run that came as records only (:mod:`.records`: done, no weights)
    and is asked for an evaluation that is not cached is forgotten and trained again, and the
    runner starts over (what it already evaluated is cached); where the context trains nothing,
    :class:`WeightsMissing` is raised instead."""
    tries: Counter = Counter()
    while True:
        try:
            return runner(ctx)
        except WeightsMissing as e:
            tries[e.run] += 1
            if tries[e.run] > 2 or not ctx.cache.train_missing:
                raise
            # under the run's lock: another process may have forgotten it and be training it
            # (then this waits for it), or have trained it again already
            with ctx.cache.locked(e.run):
                if weightless(e.run):
                    logging.getLogger(__name__).warning(
                        "%s came without its weights and an evaluation of it is not cached: "
                        "training it again (its cached evaluations are dropped)", e.run.name)
                    forget(e.run)


def run_experiment(name: str, scale="smoke", out=None, cache_dir="cache", seed: int = 0,
                   device=None, progress: bool = True, train: bool = True):
    """Run one experiment at a scale; returns the tidy results table (and writes
    ``out/results.csv`` plus ``out/config.json`` when ``out`` is given). ``train`` False:
    train nothing (corpora are still built), and raise :class:`NotTrained` at the first run the
    cache does not hold done (or, where an evaluation is not cached, holds without its
    weights): a GPU slot's section unit, whose runs earlier units trained, then fails instead
    of training them."""
    _check_name(name)
    if not isinstance(train, bool):  # e.g. papermill's -p train=False, a string
        raise ValueError(f"train must be True or False, got {train!r}")
    _hide_gpu(device)
    sc = get_scale(scale)
    random.seed(seed)
    t0 = time.time()
    ctx = _Context(sc, cache_dir, seed, progress, train_missing=train)
    df = pd.DataFrame(_rows(RUNNERS[name], ctx))
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


def run_tokens(scale: str, data_dir=SHIPPED) -> dict[str, list[float]]:
    """Training tokens of each training run of each experiment of a paper-task scale, in the
    order its runner trains them (:func:`tinytrace.experiments.training_runs`): corpus size x
    epochs x tokens per example; 0 for a run that is the base run (the fine-tuning's `base`
    entry, and the PE ablation's run of the scale's own encoding on the whole corpus)."""
    s = get_scale(scale)
    n, e, tok = s.corpus_snippets, s.train.epochs, tokens_per_example(data_dir)
    ce, draws = s.recipe(s.coverage_epochs).epochs, _coverage_draws(s, 0)
    return {
        "base": [n * e * tok["id"]],
        "id_robustness": [f * n * s.robustness_epochs * tok["id"] for f in s.robustness_corpora],
        # as :func:`_coverage_plan`: each draw's exclusion runs, then a further draw's
        # reference (the whole corpus)
        "pair_coverage": [x for d, (_, covs) in enumerate(draws) for x in
                          [s.coverage_corpus * n * ce * tok["id"]] * len(covs)
                          + ([n * ce * tok["id"]] if d and covs else [])],
        # the injected snippets are deeper, so longer: each p mixes its own token count (a
        # scaled-down task's depths have no shipped set: its curriculum's mean stands in)
        "depth_curriculum": [s.recipe(s.curriculum_epochs).epochs * sum(
            k * tok.get(part, tok["curriculum"]) for part, k in curriculum_counts(
                round(s.curriculum_corpus * n), p, _inject_roles(s)).items())
            for p in s.curriculum_ps],
        "sft_lora": [0.0] + [size * epochs * tok["id"] for size in s.sft_sizes
                             for epochs in s.sft_epochs],
        "pe_ablation": [0.0 if _pe_is_base(s, pe) else s.pe_corpus * n * e * tok["id"]
                        for pe in s.pe_variants],
    }


def training_tokens(scale: str, data_dir=SHIPPED) -> dict[str, float]:
    """Training tokens each experiment of a paper-task scale costs (:func:`run_tokens`, summed)."""
    return {exp: sum(runs) for exp, runs in run_tokens(scale, data_dir).items()}
