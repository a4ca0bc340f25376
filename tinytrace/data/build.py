"""Corpus builder: parallel chunks of records -> dedup -> splits -> Hub-layout shards (paper
Sec. 2.2, 3.2, App. C.4, C.5).

A build writes one config of a dataset folder (layout in :mod:`tinytrace.data.io`) and
regenerates the dataset card (:mod:`tinytrace.data.card`).

Guarantees: one global SHA-256 hash set over the raw snippets, applied before splitting, so no
snippet appears twice anywhere (C.4); test and validation examples pass the determinism filter
(every two consecutive steps fit in the context window, Sec. 2.2); output depends only on the
config and the seed, not on the number of workers (chunk ``i`` always uses the same random
stream and chunks are consumed in order); a build is written to a hidden temporary folder and
renamed into place when complete, so an interrupted build never looks complete.

Resume: every generated chunk is kept in ``.<name>.chunks/`` (an Arrow file per chunk) until
the build completes. A rerun after an interrupt or a crash reads the chunks already there
instead of generating them again (they depend only on the generator config, context, seed and
chunk size, checked on reuse) and generates the rest: the output is byte-identical to an
uninterrupted build. SIGINT or SIGTERM stops a build between chunks: the workers (in their own
process group, so that Ctrl-C reaches only the main process) are ended, and
:class:`tinytrace.interrupt.Interrupted` says that rerunning the same command continues it.
"""
from __future__ import annotations

import ast
import collections
import itertools
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tinytrace import __version__
from tinytrace.interrupt import Interrupted, signal_handlers, stop_requests
from tinytrace.lang.config import GeneratorConfig, get_preset

from .card import write_card
from .io import SPLITS, TOKENS_DIR
from .pipeline import CHUNK_SCHEMA, ROW_SCHEMA, Pipeline


def chunk_rng(seed: int, chunk: int) -> random.Random:
    # string seeds are hashed with SHA-512: the stream is the same on every Python version
    return random.Random(f"tinytrace/{seed}/{chunk}")


class _ChunkStore:
    """The chunks generated so far for one chunk stream (``key``), in ``folder``: chunk ``i``
    is ``i.arrow`` (its records) and ``i.json`` (its stats). A folder made for another key is
    emptied."""

    def __init__(self, folder: Path, key: dict):
        self.folder = folder
        key_file = folder / "key.json"
        if folder.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key_file.write_text(json.dumps(key, sort_keys=True) + "\n")
        self.count = 0  # chunks 0 .. count - 1 are stored
        while (folder / f"{self.count:06d}.arrow").exists():
            self.count += 1

    def load(self, i: int):
        with pa.OSFile(str(self.folder / f"{i:06d}.arrow")) as f:
            table = pa.ipc.open_file(f).read_all()
        return table, json.loads((self.folder / f"{i:06d}.json").read_text())

    def save(self, i: int, table, stats: dict) -> None:
        """Stats first, records last and renamed into place: a chunk is stored once its
        ``.arrow`` exists."""
        (self.folder / f"{i:06d}.json").write_text(json.dumps(stats) + "\n")
        part = self.folder / f"{i:06d}.arrow.part"
        with pa.OSFile(str(part), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        os.replace(part, self.folder / f"{i:06d}.arrow")
        self.count = max(self.count, i + 1)


def _own_process_group() -> None:
    """Pool initializer: a worker leaves the job's process group, so Ctrl-C or a ``kill`` of
    the group reaches only the main process, which stops the build and ends the workers with
    ``Pool.terminate``. A worker killed from outside while it holds one of the pool's queue
    locks (sending a result) would hang the pool; one left alone exits on the pool's EOF if
    the main process dies."""
    os.setpgrp()


def _worker_pool(workers: int):
    """The build's spawned worker pool. Its workers start with SIGINT ignored (inherited through
    ``exec``; Python then installs no KeyboardInterrupt handler): a Ctrl-C that reaches one while
    it is still importing, before :func:`_own_process_group` takes it out of the job's group,
    would print a traceback. ``Pool.terminate`` ends them with SIGTERM."""
    with signal_handlers({signal.SIGINT: signal.SIG_IGN}):
        return mp.get_context("spawn").Pool(workers, _own_process_group)


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round, alone or in an ``and``."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_test(v) for v in test.values)
    return (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
            and {ast.unparse(test.left), ast.unparse(test.comparators[0])} == {"__name__", "'__main__'"})


def _workers_would_rerun_the_caller() -> bool:
    """Whether a spawned worker would run this build again: it imports the main script, as
    ``multiprocessing``'s spawn does, and the build is called from the script's module-level
    code outside an ``if __name__ == "__main__":`` block. Each worker would then start the
    same build (through the experiment cache: wait for the lock its parent holds) and the
    parent would wait on them forever."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return False  # `python -m pkg`: spawn does not import the main module again
    path = getattr(main, "__file__", None)
    if not path:
        return False  # interactive, `-c`, a notebook: the workers import nothing of it
    path = os.path.realpath(path)
    frame = sys._getframe(1)  # the main script's own module-level line on the call stack
    while frame is not None and not (frame.f_code.co_name == "<module>" and
                                     os.path.realpath(frame.f_code.co_filename) == path):
        frame = frame.f_back
    if frame is None:
        return False  # called from a function the script does not run at import
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno
    return not any(isinstance(node, ast.If) and _is_main_test(node.test)
                   and node.body[0].lineno <= line <= node.body[-1].end_lineno
                   for node in ast.walk(tree))


def refuse_in_a_starting_worker() -> None:
    """A spawned process still importing the main script must not build: that script calls
    tinytrace where a worker runs it again (e.g. from a thread, which the check above cannot
    follow). Raised there, the error names the cause instead of a silent wait."""
    if getattr(mp.current_process(), "_inheriting", False):  # what spawn sets while importing
        raise RuntimeError("a worker process of a corpus build started another build while "
                           "importing the main script: put the script's work under "
                           "`if __name__ == \"__main__\":`")


class _Window:
    """Chunks made by a pool, in order, at most ``ahead`` of them submitted at a time. Not
    ``Pool.imap`` over the endless chunk indices: its task thread runs ahead of the workers,
    fills the task pipe, and ``Pool.terminate`` can then hang joining it (seen in the tests)."""

    def __init__(self, pool, tasks, ahead: int):
        self.pool, self.tasks = pool, tasks
        self.pending = collections.deque(pool.apply_async(_make_chunk, (next(tasks),))
                                         for _ in range(ahead))

    def next(self, timeout: float):
        result = self.pending[0].get(timeout)  # mp.TimeoutError while it is being made
        self.pending.popleft()
        self.pending.append(self.pool.apply_async(_make_chunk, (next(self.tasks),)))
        return result

    def close(self) -> None:
        """Let the submitted chunks finish, then end the workers: ``Pool.terminate`` while a
        worker writes a chunk into the result pipe can leave the pool's result thread waiting
        for the rest of it forever (seen in the tests)."""
        for r in self.pending:
            r.wait()
        self.pool.close()
        self.pool.join()


def _next_chunk(results, stop, pooled: bool):
    """The next chunk's result; waits in short slices so that a stop request is seen within
    about a second even while the workers are busy."""
    while not stop:
        try:
            return results.next(timeout=0.5) if pooled else next(results)
        except mp.TimeoutError:
            continue
    raise Interrupted(stop.signum, "the chunks generated so far are kept (the same command "
                                   "continues the build, byte-identical)", resume_flag=None)


def _make_chunk(args):
    """Worker: ``size`` accepted records of chunk ``chunk`` as an Arrow table (+ stats)."""
    config_dict, context, seed, chunk, size = args
    pipe = _worker_pipeline(config_dict, context)
    rng = chunk_rng(seed, chunk)
    stats: Counter = Counter()
    cols = pipe.records(rng, size, stats)
    return pa.table(cols, schema=CHUNK_SCHEMA), dict(stats)


_PIPE_CACHE: dict = {}


def _worker_pipeline(config_dict: dict, context: int) -> Pipeline:
    key = (json.dumps(config_dict, sort_keys=True), context)
    pipe = _PIPE_CACHE.get(key)
    if pipe is None:
        _PIPE_CACHE.clear()
        pipe = _PIPE_CACHE[key] = Pipeline(GeneratorConfig.from_dict(config_dict), context)
    return pipe


@dataclass
class BuildConfig:
    """What ``tinytrace data build`` makes. ``num_snippets`` counts all splits together."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    num_snippets: int = 10_000
    seed: int = 0
    test_size: int = 1024
    validation_size: int = 1024
    context: int = 512
    deterministic_train: bool = False  # the determinism filter on train too (C.5: optional)
    config_name: str | None = None  # defaults to the generator preset's name
    chunk_size: int = 1024
    shard_rows: int = 250_000
    tokens: bool = True  # also write the uint8 token stream of each split

    def __post_init__(self):
        if self.num_snippets < 0 or self.test_size < 0 or self.validation_size < 0:
            raise ValueError("sizes must be >= 0")
        if self.test_size + self.validation_size > self.num_snippets:
            raise ValueError(
                f"test ({self.test_size}) + validation ({self.validation_size}) exceed "
                f"--num-snippets ({self.num_snippets})"
            )
        if self.context < 16:
            raise ValueError(f"context must be >= 16 tokens, got {self.context}")
        if self.chunk_size < 1 or self.shard_rows < 1:
            raise ValueError("chunk_size and shard_rows must be >= 1")
        name = self.config_name or self.generator.name
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad config name {name!r}")
        self.config_name = name

    @property
    def split_sizes(self) -> dict[str, int]:
        return {
            "test": self.test_size,
            "validation": self.validation_size,
            "train": self.num_snippets - self.test_size - self.validation_size,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["generator"] = self.generator.to_dict()
        return d


class _ShardWriter:
    """Streams one split's rows into ``<split>-NNNNN-of-NNNNN.parquet`` shards and tokens."""

    def __init__(self, folder: Path, split: str, total: int, shard_rows: int, tokens: bool):
        self.folder, self.split, self.total = folder, split, total
        self.shard_rows = shard_rows
        self.n_shards = max(1, math.ceil(total / shard_rows))
        self.schema = ROW_SCHEMA
        self.written = 0
        self.writer = None
        self.tok_file = None
        self.lengths: list = []
        if tokens and total:
            (folder / TOKENS_DIR).mkdir(exist_ok=True)
            self.tok_file = open(folder / TOKENS_DIR / f"{split}.bin", "wb")

    def add(self, table) -> None:
        """Append rows (an Arrow table with the chunk schema)."""
        if self.tok_file is not None:
            toks = table.column("tokens").combine_chunks()
            _, off_buf, data = toks.buffers()
            off = np.frombuffer(off_buf, dtype=np.int32)[toks.offset : toks.offset + len(toks) + 1]
            self.tok_file.write(memoryview(data)[off[0] : off[-1]])
            self.lengths.append(np.diff(off))
        table = table.select(self.schema.names)
        while table.num_rows:
            shard = self.written // self.shard_rows
            room = (shard + 1) * self.shard_rows - self.written
            part, table = table.slice(0, room), table.slice(room)
            if self.writer is None:
                name = f"{self.split}-{shard:05d}-of-{self.n_shards:05d}.parquet"
                self.writer = pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")
            self.writer.write_table(part, row_group_size=8192)
            self.written += part.num_rows
            if self.written % self.shard_rows == 0:
                self.writer.close()
                self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tok_file is not None:
            self.tok_file.close()
            lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            np.save(self.folder / TOKENS_DIR / f"{self.split}.idx.npy", starts)


# chunks in a row that add no snippet before a build gives up: its config's snippets are used up
STALE_CHUNKS = 16


def _abandon(store, tmp: Path) -> None:
    """A build that cannot finish leaves nothing behind: no chunks to continue from (the same
    command would fail the same way), no half-written config."""
    shutil.rmtree(store.folder, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def build(cfg: BuildConfig, out: str | os.PathLike, workers: int | None = None,
          progress: bool = True, release: dict | None = None) -> dict:
    """Build one config of a dataset into ``out`` (other configs there are kept) and
    regenerate the dataset card. Returns the build summary (also in ``build.json``).
    ``release`` (what the card says about a shipped set, see :func:`build_release`) is stored
    in ``build.json`` as is. ``workers`` processes (default: one per CPU) generate the chunks;
    one only, with a warning, where they would run the caller again (a script that calls this
    at its top level, without ``if __name__ == "__main__":``)."""
    refuse_in_a_starting_worker()  # before anything of the parent's build is touched
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.config_name
    final = out / name
    tmp = out / f".{name}.incomplete"
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous build was interrupted: start it again
    tmp.mkdir()
    workers = max(1, workers or os.cpu_count() or 1)
    if workers > 1 and _workers_would_rerun_the_caller():
        warnings.warn(f"building {name} in this process only: the main script calls tinytrace "
                      "at its top level, which each worker process would run again; put that "
                      "code under `if __name__ == \"__main__\":` to build with "
                      f"{workers} processes", stacklevel=2)
        workers = 1
    sizes = cfg.split_sizes
    writers = {
        s: _ShardWriter(tmp, s, sizes[s], cfg.shard_rows, cfg.tokens) for s in SPLITS if sizes[s]
    }
    filled = {s: 0 for s in SPLITS}
    seen: set[bytes] = set()
    stats: Counter = Counter()
    t0 = time.time()
    total = cfg.num_snippets
    gen_dict = cfg.generator.to_dict()
    store = _ChunkStore(out / f".{name}.chunks", {
        "generator": gen_dict, "context": cfg.context, "seed": cfg.seed,
        "chunk_size": cfg.chunk_size, "tinytrace_version": __version__})
    tasks = ((gen_dict, cfg.context, cfg.seed, i, cfg.chunk_size)
             for i in itertools.count(store.count))
    pool = _worker_pool(workers) if workers > 1 else None
    bar = tqdm(total=total, desc=f"build {name}", unit="snippet", disable=not progress)
    with stop_requests() as stop:
        try:
            results = _Window(pool, tasks, 2 * workers) if pool else map(_make_chunk, tasks)
            done = total == 0
            n_done = chunk = stale = 0
            while not done:
                if chunk < store.count:
                    table, chunk_stats = store.load(chunk)
                else:
                    try:
                        table, chunk_stats = _next_chunk(results, stop, pool is not None)
                    except ValueError:  # the config accepts nothing: the same command would too
                        _abandon(store, tmp)
                        raise
                    store.save(chunk, table, chunk_stats)
                chunk += 1
                stats.update(chunk_stats)
                picks: dict[str, list[int]] = {s: [] for s in SPLITS}
                hashes = table.column("sha256").to_pylist()
                dets = table.column("deterministic").to_pylist()
                for i, (h, det) in enumerate(zip(hashes, dets)):
                    h = bytes.fromhex(h)
                    if h in seen:
                        stats["duplicate"] += 1
                        continue
                    seen.add(h)
                    split = _assign(det, filled, sizes, cfg.deterministic_train)
                    if split is None:
                        stats["nondeterministic"] += 1
                        continue
                    picks[split].append(i)
                    filled[split] += 1
                    n_done += 1
                    if n_done == total:
                        done = True
                        break
                for split, idx in picks.items():
                    if idx:
                        writers[split].add(table.take(idx))
                        bar.update(len(idx))
                stale = 0 if done or any(picks.values()) else stale + 1
                if stale == STALE_CHUNKS:
                    _abandon(store, tmp)
                    raise ValueError(
                        f"{name}: the last {STALE_CHUNKS} chunks ({STALE_CHUNKS * cfg.chunk_size:,} "
                        f"snippets) gave no new snippet; its generator config seems to have fewer "
                        f"than the {total:,} unique snippets asked for ({n_done:,} found; "
                        f"{stats['duplicate']:,} duplicates, {stats['nondeterministic']:,} "
                        "nondeterministic): allow more variables, statements or values, or ask "
                        "for fewer snippets")
            if pool is not None:
                results.close()
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()  # a no-op after close(); an interrupt or error ends the workers
    for w in writers.values():
        w.close()
    unique = len(seen)
    seen.clear()
    seconds = time.time() - t0
    # build.json depends only on the config and seed (a rebuild leaves `git diff` empty);
    # timings go to timing.json
    summary = {
        "config_name": name,
        "build": cfg.to_dict(),
        "splits": dict(filled),
        "stats": _stats_summary(stats, seen_count=unique),
        "tokens": _token_summary(tmp, filled),
        "tinytrace_version": __version__,
    }
    if release is not None:
        summary["release"] = release
    timing = {
        "seconds": round(seconds, 2),
        "workers": workers,
        "snippets_per_s": round(total / seconds, 1) if seconds else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (tmp / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    (tmp / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    summary.update(timing)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    shutil.rmtree(store.folder)
    write_card(out)
    return summary


def _assign(det: bool, filled: dict, sizes: dict, deterministic_train: bool) -> str | None:
    """Test first, then validation, then train (C.4: dedup happens before splitting)."""
    for split in ("test", "validation"):
        if filled[split] < sizes[split] and det:
            return split
    if filled["train"] < sizes["train"] and (det or not deterministic_train):
        return "train"
    return None


def _stats_summary(stats: Counter, seen_count: int) -> dict:
    attempts = stats.get("attempts", 0)
    keys = ("generator", "value_range", "loop_cap", "exception", "no_forbidden_pair",
            "duplicate", "nondeterministic")
    return {"attempts": attempts, "unique": seen_count, **{k: stats.get(k, 0) for k in keys}}


def _token_summary(folder: Path, filled: dict) -> dict:
    out = {}
    for split, n in filled.items():
        if not n:
            continue
        files = sorted(folder.glob(f"{split}-*.parquet"))
        tot = sum(pq.read_table(f, columns=["n_tokens"])["n_tokens"].to_numpy().sum() for f in files)
        out[split] = {"examples": n, "tokens": int(tot), "mean_tokens": round(float(tot) / n, 2)}
    return out


def build_preset(preset: str, out, num_snippets: int, seed: int = 0, **kw) -> dict:
    """Convenience: build a named preset (see :mod:`tinytrace.lang.config`)."""
    workers = kw.pop("workers", None)
    progress = kw.pop("progress", True)
    gen_overrides = kw.pop("generator_overrides", {})
    cfg = BuildConfig(get_preset(preset, **gen_overrides), num_snippets=num_snippets, seed=seed, **kw)
    return build(cfg, out, workers=workers, progress=progress)
