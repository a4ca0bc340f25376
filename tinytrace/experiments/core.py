"""The paper's experiments as functions plus configs (Sec. 3.4, 4.1-4.4, App. D-G).

Each experiment returns a tidy table: one row per model x test set x condition, with exact
match (EM), the count, and the metrics that respond before EM does (teacher-forced per-step EM,
final-state match, state-value token accuracy). A :class:`Scale` fixes corpus and test sizes,
epochs, model preset and the grids; the four scales live in :data:`SCALES`.

Expensive artifacts are cached on disk under ``cache_dir`` by a hash of their config: corpora
(``corpus-<hash>``), training runs (``run-<hash>``, resumable), evaluations
(``eval-<hash>.json``). The base model is trained once and reused by every section, and an
interrupted experiment resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinytrace.lang.config import GeneratorConfig, get_preset, sample_pairs
from tinytrace.data import TEST_SEED_OFFSET, read_split
from tinytrace.provenance import hardware

EXPERIMENTS = ["base", "id_robustness", "pair_coverage", "depth_curriculum", "sft_lora", "pe_ablation"]
METRICS = ["exact_match", "n", "step_em_tf", "final_state_match", "state_token_acc"]
EDIT_NAMES = ["variable_renaming", "comparison_symmetry", "addition_commutativity",
              "neutral_operator", "neutral_assignment"]


# --- scales ------------------------------------------------------------------------------------
@dataclass
class Scale:
    """Everything a scale fixes. ``task`` maps each role to a generator config: ``id``,
    ``longer``, ``deeper``, ``curriculum`` (train distribution of Sec. 4.3.1),
    ``inject-<k>`` (the deeper snippets mixed in) and ``depth-<k>`` (depth test sets)."""

    name: str
    description: str
    model: str  # model preset (tinytrace.model.MODEL_PRESETS)
    train: dict  # TrainConfig fields (tinytrace.train)
    corpus_snippets: int  # the base corpus, all splits
    test_size: int
    task: dict = field(default_factory=dict)
    robustness_corpora: tuple = (1.0, 0.5, 0.25, 0.125)  # fractions of corpus_snippets
    robustness_epochs: int = 8
    exclusion_pcts: tuple = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 96, 97, 98, 99, 100)
    scopes: tuple = ("assignment", "global")
    coverage_corpus: float = 1.0  # fraction of corpus_snippets for each exclusion run
    curriculum_ps: tuple = (0, 1, 5, 10, 20, 40, 60, 80, 100)
    curriculum_corpus: float = 1.0  # fraction of corpus_snippets for each curriculum run
    sft_sizes: tuple = (65_536, 131_072, 262_144, 524_288, 1_048_576, 2_097_152)
    sft_epochs: tuple = (1, 2, 4, 8)
    sft: dict = field(default_factory=dict)  # SFTConfig fields
    pe_variants: tuple = ("ape", "rpe", "rpb")
    eval_batch_size: int = 64
    max_len_factor: float = 2.0  # generation cap: this x the target length + 16 tokens
    context: int = 512  # the model's window: test sets pass the determinism filter for it
    eval_eos_prefix: bool = False  # prompts start with EOS, as examples do in training
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields over the preset

    def generator(self, role: str) -> GeneratorConfig:
        try:
            return self.task[role]
        except KeyError:
            raise ValueError(f"scale {self.name!r} has no task role {role!r}") from None

    def model_label(self) -> str:
        """The model preset with its overrides, e.g. ``tiny (pe rpb, block_size 128)``."""
        extra = ", ".join(f"{k} {v}" for k, v in self.model_overrides.items())
        return f"{self.model} ({extra})" if extra else self.model

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["task"] = {k: v.to_dict() for k, v in self.task.items()}
        return d


def paper_task() -> dict:
    """The paper's presets (Sec. 3.2, 4.3, 4.3.1)."""
    t = {r: get_preset(p) for r, p in (("id", "base"), ("longer", "longer"), ("deeper", "deeper"),
                                       ("curriculum", "depth-0-5"))}
    for d in (6, 7):
        t[f"inject-{d}"] = get_preset(f"depth-{d}")
    for d in (6, 7, 8, 9):
        t[f"depth-{d}"] = get_preset(f"depth-{d}")
    return t


def scaled_task(statements=(3, 5), depth=1, variables="abcdef", max_literal=9, *, longer=None,
                deeper=None, curriculum_depth=None, curriculum_statements=None, **generator) -> dict:
    """A scaled-down task for CPU budgets: fewer statements, shallower nesting, fewer variables
    and smaller values; the OOD axes scaled the same way.

    ``longer`` (statements) defaults to the next range up; ``deeper`` = (min, max) depth, by
    default ``depth + 1 .. depth + 2``. The curriculum (Sec. 4.3.1) trains on depths
    0..``curriculum_depth`` (default ``depth + 1``), injects the next two depths and tests on
    the next four, all with ``curriculum_statements`` (default ``lo .. hi + top + 4``).
    ``generator``: further :class:`GeneratorConfig` fields of every role (e.g. the right-hand
    side probabilities)."""
    lo, hi = statements
    common = dict(min_statements=lo, max_statements=hi, max_depth=depth, variables=variables,
                  max_literal=max_literal, value_range=(-max_literal, max_literal), **generator)
    base = get_preset("base", **common).replace(name="id")
    span = hi - lo
    long_lo, long_hi = longer or (hi + 1, hi + 1 + span + 1)
    if deeper is None:
        deeper_cfg = dict(min_depth=depth + 1, max_depth=depth + 2, max_statements=max(hi, depth + 4))
    else:
        deeper_cfg = dict(min_depth=deeper[0], max_depth=deeper[1])
    t = {
        "id": base,
        "longer": base.replace(name="longer", min_statements=long_lo, max_statements=long_hi),
        "deeper": base.replace(name="deeper", **deeper_cfg),
    }
    top = depth + 1 if curriculum_depth is None else curriculum_depth
    n_min, n_max = curriculum_statements or (lo, hi + top + 4)
    n_fixed = curriculum_statements is not None  # else the deepest sets may need more statements
    t["curriculum"] = base.replace(name=f"depth-0-{top}", max_depth=top, min_statements=n_min,
                                   max_statements=n_max)
    for d in (top + 1, top + 2):
        t[f"inject-{d}"] = base.replace(name=f"depth-{d}", min_depth=d, max_depth=d,
                                        min_statements=n_min, max_statements=n_max)
    for d in range(top + 1, top + 5):
        t[f"depth-{d}"] = base.replace(name=f"depth-{d}", min_depth=d, max_depth=d,
                                       min_statements=n_min,
                                       max_statements=n_max if n_fixed else max(n_max, d + 2))
    return t


def _scales() -> dict[str, Scale]:
    smoke = Scale(
        name="smoke",
        description="CI: every experiment in under a minute on 2 CPU cores; numbers mean nothing",
        model="tiny",
        train=dict(epochs=1, batch_size=8, micro_batch_size=None, block_size=128, log_every=5,
                   val_windows=4),
        corpus_snippets=240,
        test_size=8,
        task=scaled_task(statements=(3, 4), depth=1, variables="abcd", max_literal=9),
        robustness_corpora=(1.0, 0.5),
        robustness_epochs=2,
        exclusion_pcts=(50, 100),
        curriculum_ps=(0, 50),
        sft_sizes=(64,),
        sft_epochs=(1,),
        sft=dict(batch_size=8, micro_batch_size=None, block_size=128, val_examples=16),
        eval_batch_size=8,
        max_len_factor=1.0,
    )
    cpu = Scale(
        name="cpu",
        description="a laptop, all experiments in about an hour on 2 cores: the scaled-down task "
                    "(3-4 statements, depth <= 1, variables a-j, values in [-5, 5], one assignment "
                    "in five an `x = u op v`), chosen by measured short runs "
                    "(notes/issue4-cpu-scale.md); the 0.1M model with T5 relative position bias "
                    "instead of the paper's APE (it learns the copy-and-trace pattern in fewer "
                    "steps on CPU), a 128-token context, and evaluation prompts that start with "
                    "the end-of-example token as in training",
        model="tiny",
        model_overrides=dict(pe="rpb", block_size=128),
        # the trainer's CPU recipe (notes/issue3-train.md): small batches, one cosine phase
        train=dict(epochs=4, batch_size=8, micro_batch_size=None, block_size=128, lr_peak=1e-2,
                   lr_min=1e-3, warmup_frac=0.05, phase1_frac=1.0, weight_decay=0.0,
                   log_every=100, val_windows=32),
        corpus_snippets=20_000,
        test_size=256,
        task=scaled_task(statements=(3, 4), depth=1, variables="abcdefghij", max_literal=5,
                         longer=(5, 6), deeper=(2, 3), curriculum_depth=1,
                         curriculum_statements=(3, 6), p_rhs_literal=0.4, p_rhs_variable=0.4),
        robustness_corpora=(1.0, 0.5),
        robustness_epochs=4,
        exclusion_pcts=(60, 100),
        coverage_corpus=0.5,
        curriculum_ps=(0, 10, 50),
        curriculum_corpus=0.5,
        sft_sizes=(2048,),
        sft_epochs=(1,),
        sft=dict(batch_size=32, micro_batch_size=None, block_size=128, val_examples=64),
        eval_batch_size=64,
        context=128,
        eval_eos_prefix=True,
    )
    gpu = Scale(
        name="gpu",
        description="one GPU, each experiment <= 10 min on an H100: the paper's task and model, "
                    "a fifth of the corpus, one epoch of the `fast` recipe (one cosine phase, "
                    "peak lr 2e-3)",
        model="paper",
        # 600k snippets x 1 epoch = ~185M tokens: ~3 H100-minutes of training at ~1M tokens/s
        train=dict(name="fast", epochs=1, batch_size=512, micro_batch_size=256, lr_peak=2e-3,
                   warmup_frac=0.05, phase1_frac=1.0, compile=True),
        corpus_snippets=600_000,
        test_size=1024,
        task=paper_task(),
        robustness_corpora=(1.0, 0.5, 0.25, 0.125),
        robustness_epochs=2,
        exclusion_pcts=(10, 50, 90, 95, 98, 100),
        coverage_corpus=0.25,
        curriculum_ps=(0, 1, 10, 100),
        sft_sizes=(65_536,),
        sft_epochs=(1,),
        sft=dict(batch_size=512, micro_batch_size=256),
        eval_batch_size=256,
    )
    paper = Scale(
        name="paper",
        description="the paper's exact sizes, epochs, model and recipe (Sec. 3-4, App. C-G)",
        model="paper",
        train=dict(epochs=4, batch_size=512, micro_batch_size=64),
        corpus_snippets=3_000_000,
        test_size=1024,
        task=paper_task(),
        robustness_corpora=(1.0, 0.5, 0.25, 0.125),
        robustness_epochs=8,
        sft=dict(batch_size=512, micro_batch_size=64),
        eval_batch_size=256,
    )
    return {s.name: s for s in (smoke, cpu, gpu, paper)}


SCALES: dict[str, Scale] = _scales()

# Measured wall times: `tinytrace notebooks run --scale S --jobs 2` (all six sections, fresh
# cache) on the shared 2-core dev machine (notes/issue5.md, notes/issue4-cpu-scale.md); gpu:
# what one H100 slot measured (notes/issue6-gpu.md).
MEASURED_TIMES = {
    "smoke": "all sections: 2 min on 2 CPU cores (load ~8)",
    "cpu": "all sections: 33 min on 2 CPU cores (load 1.3-6.4)",
    "gpu": "base model only: data 9 s + training 2.8 min on one H100; sections not run yet",
}


def get_scale(name: str) -> Scale:
    if isinstance(name, Scale):
        return name
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; choose from {', '.join(SCALES)}")
    return SCALES[name]


def scale_table():
    """One row per scale: what it fixes (for the book)."""
    import pandas as pd

    rows = []
    for s in SCALES.values():
        t = s.generator("id")
        rows.append({
            "scale": s.name, "model": s.model_label(), "base corpus": s.corpus_snippets,
            "test size": s.test_size, "epochs": s.train.get("epochs"),
            "batch (seq x tokens)": f"{s.train.get('batch_size')} x {s.train.get('block_size') or s.context}",
            "task": f"{t.min_statements}-{t.max_statements} statements, depth <= {t.max_depth}, "
                    f"{len(t.variables)} variables, values {list(t.value_range)}",
            "robustness corpora": len(s.robustness_corpora),
            "exclusion %": ", ".join(map(str, s.exclusion_pcts)),
            "curriculum p": ", ".join(map(str, s.curriculum_ps)),
            "measured time": MEASURED_TIMES.get(s.name, "not run yet"),
            "description": s.description,
        })
    return pd.DataFrame(rows)


# --- cache ------------------------------------------------------------------------------------
def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Cache:
    """Artifacts keyed by a hash of their config, so reruns reuse and interrupted work resumes."""

    def __init__(self, root, progress: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress

    # corpora
    def corpus(self, gen: GeneratorConfig, n: int, test_size: int, validation_size: int = 0,
               seed: int = 0, context: int = 512) -> tuple[Path, str]:
        from tinytrace.data import BuildConfig, build

        cfg = BuildConfig(gen, num_snippets=n, seed=seed, test_size=test_size,
                          validation_size=validation_size, context=context, config_name="data")
        folder = self.root / f"corpus-{_key(cfg.to_dict())}"
        if not (folder / "data" / "build.json").exists():
            workers = 1 if n < 20_000 else os.cpu_count()  # a pool costs more than it saves on small sets
            build(cfg, folder, progress=self.progress, workers=workers)
        return folder, "data"

    def test_set(self, gen: GeneratorConfig, n: int, seed: int, context: int) -> tuple[Path, str]:
        return self.corpus(gen, n, test_size=n, seed=seed + TEST_SEED_OFFSET, context=context)

    # runs
    def run_dir(self, scale: Scale, corpus: tuple[Path, str], model_cfg, train=None,
                tag: str = "") -> tuple[Path, object]:
        from tinytrace.train import TrainConfig

        tc = TrainConfig(**(train if train is not None else scale.train))
        key = _key({"model": model_cfg.to_dict(), "train": tc.to_dict(),
                    "data": corpus[0].name, "tag": tag})
        return self.root / f"run-{key}", tc

    def run(self, scale: Scale, corpus: tuple[Path, str], model_cfg, callbacks=(), train=None,
            tag: str = "") -> Path:
        """Train (or resume, or reuse) the run of this model, recipe and corpus."""
        from tinytrace.train import train as train_fn

        out, tc = self.run_dir(scale, corpus, model_cfg, train, tag)
        if (out / "done.json").exists():
            return out
        train_fn(tc, model_cfg, corpus[0], corpus[1], out, resume=True, callbacks=callbacks,
                 progress=self.progress)
        (out / "done.json").write_text(json.dumps({"finished": time.time()}) + "\n")
        return out

    # evaluations
    def evaluate(self, model, run_key: str, data, data_key: str, batch_size: int,
                 max_len_factor: float = 2.0, eos_prefix: bool = False) -> dict:
        from tinytrace.evaluate import evaluate

        key = [run_key, data_key, max_len_factor] + (["eos_prefix"] if eos_prefix else [])
        path = self.root / f"eval-{_key(key)}.json"
        if path.exists():
            return json.loads(path.read_text())
        df, summary = evaluate(model, data, batch_size=batch_size, max_len_factor=max_len_factor,
                               eos_prefix=eos_prefix)
        result = {k: summary.get(k) for k in METRICS}
        result["timing"] = {k: summary.get(k) for k in (
            "seconds_generate", "seconds_teacher_forced", "generated_tokens", "tokens_per_s",
            "traces_per_s", "batch_size", "device")}
        result["correct"] = [bool(c) for c in df["correct"]]
        result["clip_candidates"] = _clip_flags(df)
        path.write_text(json.dumps(result) + "\n")
        return result


def _clip_flags(df) -> list:
    """Per example: the first wrong line's target and predicted indentation (tabs), or None."""
    out = []
    for pred, target, ok in zip(df["prediction"], df["target"], df["correct"]):
        if ok:
            out.append(None)
            continue
        pl, tl = pred.split("\n"), target.split("\n")
        pair = None
        for a, b in zip(pl, tl):
            if a != b:
                pair = (_tabs(b), _tabs(a))
                break
        out.append(pair)
    return out


def _tabs(line: str) -> int:
    return len(line.lstrip("@")) - len(line.lstrip("@").lstrip("\t"))


# --- helpers --------------------------------------------------------------------------------------
def _model_config(scale: Scale, **overrides):
    from tinytrace.model import get_model_config

    return get_model_config(scale.model, **{**scale.model_overrides, **overrides})


def _device():
    """Where experiments evaluate: the GPU when one is visible (``run_experiment(device="cpu")``
    hides it), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(run_dir: Path):
    """A trained run's model, on the evaluation device (checkpoints load on the CPU: without
    the move, evaluation on a GPU machine silently ran on its CPU)."""
    from tinytrace.model import load_checkpoint

    return load_checkpoint(run_dir).to(_device())


def _row(experiment: str, model: str, test_set: str, condition: str, result: dict, **extra) -> dict:
    row = {"experiment": experiment, "model": model, "test_set": test_set, "condition": condition}
    row.update({k: result.get(k) for k in METRICS})
    row.update(extra)
    return row


class _Context:
    """What every experiment needs: the scale, the cache, the seed and the shared base model."""

    def __init__(self, scale: Scale, cache_dir, seed: int, progress: bool):
        self.scale = scale
        self.seed = seed
        self.cache = Cache(cache_dir, progress=progress)

    def base_corpus(self, fraction: float = 1.0, gen: GeneratorConfig | None = None):
        s = self.scale
        n = max(int(s.corpus_snippets * fraction), s.test_size + 2 * s.test_size // 4 + 8)
        return self.cache.corpus(gen or s.generator("id"), n, test_size=s.test_size,
                                 validation_size=max(s.test_size // 4, 8), seed=self.seed,
                                 context=s.context)

    def test_set(self, role: str):
        s = self.scale
        return self.cache.test_set(s.generator(role), s.test_size, self.seed, s.context)

    def base_run(self) -> Path:
        return self.cache.run(self.scale, self.base_corpus(), _model_config(self.scale))

    def eval(self, model, run_dir: Path, data, data_key: str) -> dict:
        s = self.scale
        return self.cache.evaluate(model, str(run_dir.name), data, data_key, s.eval_batch_size,
                                   s.max_len_factor, s.eval_eos_prefix)

    def eval_set(self, model, run_dir: Path, corpus: tuple[Path, str]) -> dict:
        return self.eval(model, run_dir, read_split(*corpus), corpus[0].name)


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
    from tinytrace.lang.edits import edit_dataset

    s = ctx.scale
    rows: list[dict] = []
    for frac in s.robustness_corpora:
        corpus = ctx.base_corpus(frac)
        n_train = int(s.corpus_snippets * frac)
        label = _count_label(n_train)
        test = read_split(*corpus)
        edited_full = {e: edit_dataset(test, e, seed=ctx.seed, config=s.generator("id"))
                       for e in EDIT_NAMES}  # each: records with the original `index`
        train = {**s.train, "epochs": s.robustness_epochs}
        run_dir, _ = ctx.cache.run_dir(s, corpus, _model_config(s), train, tag="id_robustness")

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

        run = ctx.cache.run(s, corpus, _model_config(s), callbacks=[per_epoch], train=train,
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
    base_gen = s.generator("id")
    for scope in s.scopes:
        for pct in s.exclusion_pcts:
            pairs = sample_pairs(pct, seed=ctx.seed, alphabet=base_gen.variables)
            gen = base_gen.replace(name=f"{scope}-{pct}", forbidden_pairs=pairs, exclusion_scope=scope)
            corpus = ctx.base_corpus(s.coverage_corpus, gen=gen)
            run = ctx.cache.run(s, corpus, _model_config(s), tag=f"coverage-{scope}-{pct}")
            model = _load(run)
            allowed = ctx.eval_set(model, run, corpus)
            rows.append(_row("pair_coverage", f"{scope}-{pct}", "allowed", f"{pct}%", allowed,
                             scope=scope, exclusion_pct=pct, n_forbidden=len(pairs)))
            if pairs:
                test_gen = base_gen.replace(name=f"excluded-{pct}", forbidden_pairs=pairs,
                                            require_forbidden_pair=True)
                excluded = ctx.eval_set(model, run, ctx.cache.test_set(test_gen, s.test_size,
                                                                       ctx.seed, s.context))
                rows.append(_row("pair_coverage", f"{scope}-{pct}", "excluded", f"{pct}%", excluded,
                                 scope=scope, exclusion_pct=pct, n_forbidden=len(pairs)))
    return rows


# --- 4. depth curriculum (Sec. 4.3.1, App. F) -----------------------------------------------------------
def mix_corpus(parts: list[tuple[Path, str, int]], out: Path, seed: int = 0) -> tuple[Path, str]:
    """A training corpus made of the first ``n`` train examples of each part, shuffled; the
    validation and test splits of the first part are kept. Written like
    :func:`tinytrace.data.build` (Hub layout + token stream), atomically."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

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
        run = ctx.cache.run(s, mixed, _model_config(s), tag=f"curriculum-{p}")
        model = _load(run)
        for role in tests:
            corpus = base if role == "curriculum" else ctx.test_set(role)
            res = ctx.eval_set(model, run, corpus)
            rows.append(_row("depth_curriculum", f"p={p}", s.generator(role).name, f"{p}%", res, p=p))
    return rows


# --- 5. SFT with LoRA (Sec. 4.4, App. G.1) -------------------------------------------------------------
def exp_sft_lora(ctx: _Context) -> list[dict]:
    from tinytrace.train.sft import SFTConfig, finetune

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
            cfg = SFTConfig(**{**s.sft, "epochs": epochs, "data_size": size, "seed": ctx.seed})
            out = ctx.cache.root / f"sft-{_key([base_run.name, data[0].name, dataclasses.asdict(cfg)])}"
            summary = finetune(base_run, data[0], data[1], out, cfg, progress=ctx.cache.progress)
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
    from tinytrace.model import count_params, match_params

    s = ctx.scale
    base_cfg = _model_config(s)
    rows = []
    for pe in s.pe_variants:
        if pe == base_cfg.pe:
            cfg, run = base_cfg, ctx.base_run()
        else:
            cfg = match_params(_model_config(s, pe=pe), count_params(base_cfg))
            run = ctx.cache.run(s, ctx.base_corpus(), cfg, tag=f"pe-{pe}")
        model = _load(run)
        params = model.num_params()
        for name, corpus in (("id", ctx.base_corpus()), ("longer", ctx.test_set("longer")),
                             ("deeper", ctx.test_set("deeper"))):
            rows.append(_row("pe_ablation", pe, name, "-", ctx.eval_set(model, run, corpus),
                             params=params, n_embd=cfg.n_embd))
    return rows


_FUNCS = {
    "base": exp_base,
    "id_robustness": exp_id_robustness,
    "pair_coverage": exp_pair_coverage,
    "depth_curriculum": exp_depth_curriculum,
    "sft_lora": exp_sft_lora,
    "pe_ablation": exp_pe_ablation,
}


def run_experiment(name: str, scale="smoke", out=None, cache_dir="cache", seed: int = 0,
                   device=None, progress: bool = True):
    """Run one experiment at a scale; returns the tidy results table (and writes
    ``out/results.csv`` plus ``out/config.json`` when ``out`` is given)."""
    import pandas as pd

    if name not in _FUNCS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if device is not None and str(device).startswith("cpu"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sc = get_scale(scale)
    random.seed(seed)
    t0 = time.time()
    ctx = _Context(sc, cache_dir, seed, progress)
    df = pd.DataFrame(_FUNCS[name](ctx))
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
    import pandas as pd

    recs = [json.loads(line) for line in Path(run_dir, "log.jsonl").read_text().splitlines()]
    return pd.DataFrame([r for r in recs if r.get("event") == "step"])


def base_run_dir(scale="smoke", cache_dir="cache", seed: int = 0) -> Path:
    """The cached base-model run of a scale (trained on first use)."""
    return _Context(get_scale(scale), cache_dir, seed, progress=False).base_run()


def generator_stats(preset="base", n: int = 2000, seed: int = 0):
    """Per-snippet statistics of ``n`` accepted snippets, and the rejection counts."""
    from collections import Counter

    import pandas as pd

    from tinytrace.data import Pipeline

    cfg = preset if isinstance(preset, GeneratorConfig) else get_preset(preset)
    stats: Counter = Counter()
    cols = Pipeline(cfg).records(random.Random(seed), n, stats)
    keys = ("n_statements", "max_depth", "n_steps", "n_tokens")
    return pd.DataFrame({k: cols[k] for k in keys}), dict(stats)


# --- CLI -------------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("experiment", help="run one of the paper's experiments")
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--scale", default="smoke", choices=list(SCALES))
    p.add_argument("--out", required=True, help="writes results.csv and config.json here")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    df = run_experiment(args.name, args.scale, args.out, args.cache_dir, args.seed, args.device,
                        progress=not args.quiet)
    cols = [c for c in ("model", "test_set", "condition", "exact_match", "n", "step_em_tf",
                        "final_state_match") if c in df.columns]
    print(df[cols].to_string(index=False))
    print(f"wrote {Path(args.out) / 'results.csv'}")
    return 0
