"""The artifact cache of the experiments, keyed by a hash of each artifact's config.

Corpora (``corpus-<hash>``), training runs (``run-<hash>``, resumable) and evaluations
(``eval-<hash>.json``) live under one folder, so reruns reuse them and an interrupted experiment
resumes where it stopped. The keys are part of the cache's contract: the same config must give
the same key, or every cached run is retrained. Each artifact is made under its own lock
(``<artifact>.lock``, a ``filelock`` file), so two processes that need the same corpus or run
at once never build it twice: the second waits for the first, then reuses its result.

Each artifact keeps what it cost to make (a corpus its ``cost.json``, a run its log, an
evaluation its timing), and :data:`USED` collects the artifacts this process used: a section
reports their sum (:func:`compute_used`), the same whether it found them cached or not.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

import tinytrace.data as tdata  # tdata.build, not a copy of it: tests capture what gets built
from tinytrace.data import TEST_SEED_OFFSET, BuildConfig, read_split
from tinytrace.data.build import refuse_in_a_starting_worker
from tinytrace.evaluate import COUNTS, METRICS, evaluate, scores
from tinytrace.lang.config import GeneratorConfig
from tinytrace.model import load_checkpoint
from tinytrace.train import TrainConfig
from tinytrace.train import train as train_run

from .analysis import classify_failure, max_indent
from .records import run_name
from .scales import Scale


# When and what a run checkpoints, and whether its kernels sum in a fixed order, do not change
# what it computes: left out of its key (which also keeps the keys of the runs cached before
# these fields existed).
_NOT_IN_KEY = ("save_every_minutes", "keep_epoch_weights", "deterministic")
# Fields added after runs were cached: at these values (the behaviour before the field) they
# stay out of the key, so those runs keep their keys.
_KEY_FROM_NON_DEFAULT = {"state_loss_weight": 1.0, "compile_mode": "default",
                         "compile_optimizer": False}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings(cfg) -> dict:
    """A train or SFT config's fields that make up a cache key."""
    return {k: v for k, v in cfg.to_dict().items()
            if k not in _NOT_IN_KEY and not (k in _KEY_FROM_NON_DEFAULT and v == _KEY_FROM_NON_DEFAULT[k])}


# Every artifact this process's experiments used, with the seconds it took to make, recorded
# with the artifact (None where it was made before costs were recorded): a cached artifact counts
# what it once cost, so a section reports the same compute whether it found it cached or not.
USED: dict[str, tuple[str, float | None]] = {}


def _use(kind: str, path: Path, seconds: float | None) -> None:
    USED[str(path)] = (kind, seconds)


def _run_seconds(run: Path) -> float | None:
    """Seconds of a finished training or fine-tuning run, over all its segments: the largest
    ``elapsed_s`` its log records (cumulative across resumes) or its ``end`` event's
    ``seconds`` (a fine-tuning run's total), whichever is larger."""
    log = run / "log.jsonl"
    if not log.exists():
        return None
    events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    times = [float(e["elapsed_s"]) for e in events if e.get("elapsed_s") is not None]
    times += [float(e["seconds"]) for e in events if e.get("event") == "end" and e.get("seconds") is not None]
    return max(times) if times else None


def compute_used() -> dict:
    """What the artifacts this process used cost when they were made: seconds by kind
    (``train``, ``evaluate``, ``data``), their total, how many have no recorded cost, and
    ``artifacts`` (name -> [kind, seconds]), so that totals over several sections count an
    artifact they share once (:func:`compute_total`)."""
    arts = {Path(p).name: [kind, None if sec is None else round(sec, 2)]
            for p, (kind, sec) in USED.items()}
    return {**compute_total([{"artifacts": arts}]), "artifacts": arts}


def compute_total(records: list[dict]) -> dict:
    """Seconds by kind, total and unrecorded count over the ``artifacts`` of several
    :func:`compute_used` records, each artifact once."""
    arts: dict = {}
    for r in records:
        for name, (kind, sec) in r.get("artifacts", {}).items():
            if arts.get(name, (kind, None))[1] is None:  # a recorded cost wins over none
                arts[name] = (kind, sec)
    out = {"train": 0.0, "evaluate": 0.0, "data": 0.0}
    for kind, sec in arts.values():
        out[kind] += sec or 0.0
    out = {k: round(v, 1) for k, v in out.items()}
    return {**out, "seconds": round(sum(out.values()), 1),
            "unrecorded": sum(sec is None for _, sec in arts.values())}


class NotTrained(Exception):
    """A run asked of a cache that only evaluates (``train_missing=False``) is not trained."""

    def __init__(self, run: Path):
        super().__init__(f"{run.name} is not trained")
        self.run = run


class WeightsMissing(NotTrained):
    """A run is done but its weights are not here: it came as records only (a GPU slot's, or
    the committed store's, :mod:`.records`), and something needs more than its cached
    evaluations."""

    def __init__(self, run: Path):
        Exception.__init__(self, f"{run.name} is done but its weights are not in {run.parent}")
        self.run = run


class LazyModel:
    """A trained run's model, loaded on first use: an experiment whose evaluations are all
    cached never reads the weights (a GPU slot then needs to carry none)."""

    def __init__(self, run_dir: Path, device):
        self.run_dir, self.device, self._model = Path(run_dir), device, None

    def get(self):
        if self._model is None:
            # no done marker: another process forgot the run and trains it again right now
            if not all((self.run_dir / f).exists() for f in ("done.json", "model.safetensors")):
                raise WeightsMissing(self.run_dir)
            self._model = load_checkpoint(self.run_dir).to(self.device)
        return self._model

    def __getattr__(self, name):  # the model's own attributes (parameters, num_params, ...)
        return getattr(self.get(), name)


class Cache:
    """Artifacts keyed by a hash of their config, so reruns reuse and interrupted work resumes.
    ``train_missing=False``: a run that is not trained raises :class:`NotTrained` instead."""

    def __init__(self, root, progress: bool = True, train_missing: bool = True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.train_missing = train_missing

    @contextmanager
    def locked(self, artifact: Path):
        """Hold the lock of ``artifact`` while checking for it and making it: another process
        (or thread) asking for the same artifact waits here until it is made."""
        lock = FileLock(f"{artifact}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            refuse_in_a_starting_worker()  # the holder may be the process that spawned this one
            logging.getLogger(__name__).warning("waiting for %s: another process is making it",
                                                artifact.name)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # corpora
    def corpus(self, gen: GeneratorConfig, n: int, test_size: int, validation_size: int = 0,
               seed: int = 0, context: int = 512) -> tuple[Path, str]:
        cfg = BuildConfig(gen, num_snippets=n, seed=seed, test_size=test_size,
                          validation_size=validation_size, context=context, config_name="data")
        folder = self.root / f"corpus-{_key(cfg.to_dict())}"
        cost = folder / "cost.json"
        with self.locked(folder):
            if not (folder / "data" / "build.json").exists():
                workers = 1 if n < 20_000 else os.cpu_count()  # a pool costs more than it saves on small sets
                t0 = time.perf_counter()
                tdata.build(cfg, folder, progress=self.progress, workers=workers)
                if folder.is_dir():  # a build that made no folder (stubbed out) has no cost
                    cost.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 2)}) + "\n")
        _use("data", folder, json.loads(cost.read_text())["seconds"] if cost.exists() else None)
        return folder, "data"

    def test_set(self, gen: GeneratorConfig, n: int, seed: int, context: int) -> tuple[Path, str]:
        return self.corpus(gen, n, test_size=n, seed=seed + TEST_SEED_OFFSET, context=context)

    # runs
    def run_dir(self, scale: Scale, corpus: tuple[Path, str], model_cfg,
                train: TrainConfig | None = None, tag: str = "") -> tuple[Path, TrainConfig]:
        """Where the run of this model, recipe (default: the scale's) and corpus lives."""
        tc = train if train is not None else scale.train
        key = _key({"model": model_cfg.to_dict(), "train": settings(tc),
                    "data": corpus[0].name, "tag": tag})
        return self.root / f"run-{key}", tc

    def run(self, scale: Scale, corpus: tuple[Path, str], model_cfg, callbacks=(),
            train: TrainConfig | None = None, tag: str = "") -> Path:
        """Train (or resume, or reuse) the run of this model, recipe and corpus."""
        out, tc = self.run_dir(scale, corpus, model_cfg, train, tag)
        with self.locked(out):
            if not (out / "done.json").exists():
                if not self.train_missing:
                    raise NotTrained(out)
                train_run(tc, model_cfg, corpus[0], corpus[1], out, resume=True,
                          callbacks=callbacks, progress=self.progress)
                (out / "done.json").write_text(json.dumps({"finished": time.time()}) + "\n")
        _use("train", out, _run_seconds(out))
        return out

    # evaluations
    def evaluate(self, model, run_key: str, data, data_key: str, batch_size: int,
                 max_len_factor: float = 2.0, eos_prefix: bool = False,
                 require: tuple = ()) -> dict:
        """The cached evaluation of ``model`` on ``data``: metrics, per-example ``correct``,
        the deepest indentation of target and prediction and the kind of each failure.
        ``require``: fields a cached result must hold, else it is evaluated again (results
        cached before the field existed). ``model`` None: only a cached one will do (the
        weights it was made of are gone, as a robustness run's per-epoch ones are)."""
        key = [run_key, data_key, max_len_factor] + (["eos_prefix"] if eos_prefix else [])
        path = self.root / f"eval-{_key(key)}.json"
        with self.locked(path):
            if path.exists():
                cached = json.loads(path.read_text())
                if "run" not in cached:  # cached before evaluations named their run
                    cached["run"] = run_key
                    path.write_text(json.dumps(cached) + "\n")
                if all(k in cached for k in require):
                    _use("evaluate", path, _eval_seconds(cached))
                    return cached
            if model is None:
                raise WeightsMissing(self.root / run_name(run_key))
            if isinstance(model, LazyModel):
                model = model.get()
            df, summary = evaluate(model, data, batch_size=batch_size,
                                   max_len_factor=max_len_factor, eos_prefix=eos_prefix)
            result = {k: summary.get(k) for k in METRICS}
            result["run"] = run_key  # what it evaluated: records.forget finds it by this
            result["timing"] = {k: summary.get(k) for k in (
                "seconds_generate", "seconds_teacher_forced", "generated_tokens", "tokens_per_s",
                "traces_per_s", "batch_size", "device")}
            result["correct"] = [bool(c) for c in df["correct"]]
            # the other per-example counts, so a subset's scores need no new evaluation (subset)
            result["counts"] = {k: [int(v) for v in df[k]] for k in COUNTS
                                if k != "correct" and k in df}
            result["max_indent"] = max_indent(df["prediction"], df["target"])
            result["failure"] = [classify_failure(p, t) for p, t in zip(df["prediction"], df["target"])]
            path.write_text(json.dumps(result) + "\n")
            _use("evaluate", path, _eval_seconds(result))
            return result


def _eval_seconds(result: dict) -> float | None:
    t = result.get("timing") or {}
    parts = [t.get("seconds_generate"), t.get("seconds_teacher_forced")]
    return None if all(v is None for v in parts) else sum(v or 0.0 for v in parts)


def subset(result: dict, positions: list[int]) -> dict:
    """The cached evaluation ``result`` restricted to the examples at ``positions``: scores
    pooled over them (:func:`~tinytrace.evaluate.metrics.scores`) and their per-example fields.
    Greedy decoding is per example, so this is the evaluation of those examples alone, without
    decoding them again. Needs a result that keeps its counts (``require=("counts",)``)."""
    own = [k for k in ("correct", "max_indent", "failure") if k in result]
    per = {**result["counts"], **{k: result[k] for k in own}}
    picked = {k: [v[i] for i in positions] for k, v in per.items()}
    return {**scores(picked), **{k: picked[k] for k in own}}


class _Context:
    """What every experiment needs: the scale, the cache, the seed and the shared base model."""

    def __init__(self, scale: Scale, cache_dir, seed: int, progress: bool,
                 train_missing: bool = True, evaluate_only: bool = False):
        self.scale = scale
        self.seed = seed
        self.cache = Cache(cache_dir, progress=progress, train_missing=train_missing)
        # a training unit's pass over its own runs: rows that need another unit's weights wait
        self.evaluate_only = evaluate_only

    def at_seed(self, seed: int) -> "_Context":
        """The same scale and cache at another seed (another draw of the data)."""
        return _Context(self.scale, self.cache.root, seed, self.cache.progress,
                        self.cache.train_missing, self.evaluate_only)

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
        return self.cache.run(self.scale, self.base_corpus(), self.scale.model_config())

    def eval(self, model, run_dir: Path, data, data_key: str, require: tuple = ()) -> dict:
        s = self.scale
        return self.cache.evaluate(model, str(run_dir.name), data, data_key, s.eval_batch_size,
                                   s.max_len_factor, s.eval_eos_prefix, require)

    def eval_set(self, model, run_dir: Path, corpus: tuple[Path, str], require: tuple = ()) -> dict:
        return self.eval(model, run_dir, read_split(*corpus), corpus[0].name, require)
