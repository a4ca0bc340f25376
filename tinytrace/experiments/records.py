"""The small records of a run cache, kept in a store that is committed, so that finished work
survives a fresh checkout and a notebook can be run again without training again.

A cache (:mod:`.cache`) holds corpora (rebuilt, seeded, where missing), weights (large) and small
records: evaluations (``eval-*.json``), the robustness runs' per-epoch rows (``*.rows.json``)
and each run's metadata (the files directly in ``run-*/`` and ``sft-*/``: config, log, done
marker; no weights). A section notebook reads only those, as long as every evaluation it asks
for is cached (models load lazily, :class:`.cache.LazyModel`).

:func:`export_records` writes a cache's records into a store folder, one gzip file per record
under the record's own path (``eval-<key>.json.gz``, ``run-<key>/log.jsonl.gz``): the names are
keys of the artifacts' configs, so the stores of several sessions or machines merge file by
file, and a file that did not change is written with the same bytes. :func:`import_records`
writes the store's records that a cache lacks into it, never over a record the cache has.

A run imported this way is done without its weights. Where something needs them (an evaluation
that is not cached: a changed notebook, or another scale that shares the run), the model raises
:class:`WeightsMissing`, and :func:`~.runners.run_experiment` forgets the run (:func:`forget`:
its metadata, the evaluations made of it and its rows, and the fine-tuning runs made from it;
listed in the cache's :data:`FORGOTTEN`, so that :func:`export_records` removes them from the
store too) and trains it again; with ``train=False`` (``--no-train``) it fails instead.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

SUFFIX = ".gz"
FORGOTTEN = ".forgotten"  # in a cache: the records forget() removed, one relative path a line


def _is_run(folder: str) -> bool:
    """A training run's or fine-tuning run's folder (the fine-tuning data, ``sft-data-*``, is a
    corpus: rebuilt where missing)."""
    return folder.startswith(("run-", "sft-")) and not folder.startswith("sft-data-")


def run_name(run_key: str) -> str:
    """The run an evaluation's ``run_key`` names: itself, or for a per-epoch evaluation of a
    robustness run (``run-<key>-e<epoch>``) that run."""
    head, _, epoch = run_key.rpartition("-e")
    return head if head and epoch.isdigit() else run_key


def _of_run(cache: Path, rel: Path) -> str:
    """The run a top-level record belongs to: a robustness rows file's, or the run an evaluation
    names (``"run"``); "" if none."""
    name = rel.parts[0]
    if name.endswith(".rows.json"):
        return run_name(name[:-len(".rows.json")])
    if name.startswith("eval-") and len(rel.parts) == 1:
        try:
            return run_name(json.loads((cache / rel).read_text()).get("run", ""))
        except (OSError, ValueError):
            return ""
    return ""


def record_files(cache, since: float | None = None, used=()) -> list[Path]:
    """The records of ``cache`` (relative paths): the files at its top (evaluations, robustness
    rows) and the files directly in its run folders, without weights, locks, checkpoints or
    corpora, and only of the runs that finished (``done.json``: an unfinished run cannot resume
    from its metadata alone). All of them, or with ``since`` (wall-clock seconds) those written
    at or after it and those of the artifacts named in ``used`` (a section's
    ``compute.artifacts``: its runs' metadata, rows and evaluations too)."""
    cache, used = Path(cache), set(used)
    out = []
    for top in _entries(cache):
        files = (_entries(top) if _is_run(top.name) and (top / "done.json").is_file() else [top])
        for f in files:
            rel = f.relative_to(cache)
            if (f.name.startswith(".") or f.suffix in (".lock", ".safetensors", ".tmp")
                    or not f.is_file()):
                continue
            try:
                mtime = f.stat().st_mtime
            except FileNotFoundError:  # removed since listed: another process is making it
                continue
            if (since is None or mtime >= since or rel.parts[0] in used
                    or (used and _of_run(cache, rel) in used)):
                out.append(rel)
    return sorted(out)


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds now, not its subfolders' contents (none if it is gone: another
    process working in the same cache may rename or remove a folder meanwhile)."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically (a temporary file of its own, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_records(cache, store, since: float | None = None, used=()) -> int:
    """Write the records of ``cache`` (:func:`record_files`: all, or those written since
    ``since`` and those of ``used``) into ``store``, each gzipped under its own path; returns
    how many files changed. The gzip header holds no time, so a record that did not change
    keeps its bytes (and its file is not rewritten). The records the cache forgot
    (:func:`forget`) and has not made again leave the store."""
    cache, store = Path(cache), Path(store)
    changed = 0
    gone = cache / FORGOTTEN
    for rel in (gone.read_text().split("\n") if gone.is_file() else []):
        if rel and not (cache / rel).exists() and (store / f"{rel}{SUFFIX}").is_file():
            (store / f"{rel}{SUFFIX}").unlink()
            changed += 1
    for rel in record_files(cache, since, used):
        data = gzip.compress((cache / rel).read_bytes(), mtime=0)
        dst = store / f"{rel}{SUFFIX}"
        if dst.is_file() and dst.read_bytes() == data:
            continue
        _write(dst, data)
        changed += 1
    return changed


def import_records(store, cache) -> int:
    """Write the records of ``store`` that ``cache`` lacks into it (a record the cache has, made
    there, wins; a run the cache has in any state, finished or not, keeps its own folder);
    returns how many. A missing store imports nothing."""
    store, cache = Path(store), Path(cache)
    if not store.is_dir():
        return 0
    had = {p.name for p in cache.iterdir() if p.is_dir()} if cache.is_dir() else set()
    n = 0
    for f in sorted(store.rglob(f"*{SUFFIX}")):
        rel = f.relative_to(store)
        dst = cache / str(rel)[:-len(SUFFIX)]
        if dst.name.startswith(".") or dst.exists() or len(rel.parts) == 2 and rel.parts[0] in had:
            continue
        _write(dst, gzip.decompress(f.read_bytes()))
        n += 1
    return n


def weightless(run: Path) -> bool:
    """A run that is done but has no weights here: it came as records only."""
    return (run / "done.json").exists() and not (run / "model.safetensors").exists()


def _made_from(cache: Path, run: str) -> list[Path]:
    """The weightless fine-tuning runs in ``cache`` that started from ``run``'s weights
    (``sft.json``'s ``base_run``)."""
    out = []
    for f in sorted(cache.glob("sft-*/sft.json")):
        try:
            base = Path(json.loads(f.read_text()).get("base_run", "")).name
        except (OSError, ValueError):
            continue
        if base == run and weightless(f.parent):
            out.append(f.parent)
    return out


def forget(run: Path) -> list[Path]:
    """Remove what a run imported without its weights left in its cache, so that it trains
    again: its metadata (the run folder, which holds no weights), the evaluations made of it
    (those that name it, ``"run"``, per-epoch ones too) and its robustness rows; and the same
    of the fine-tuning runs imported with it that started from its weights (the run trained
    again may differ, and they must start from it). Returns what was removed. Refuses a run
    that has its weights."""
    run = Path(run)
    if (run / "model.safetensors").exists():
        raise ValueError(f"{run.name} has its weights: nothing to forget")
    cache = run.parent
    names = {run.name, *(p.name for p in _made_from(cache, run.name))}
    gone = sorted(f for f in cache.glob("*.json") if _of_run(cache, Path(f.name)) in names)
    gone += sorted(p for name in sorted(names) for p in (cache / name).glob("*") if p.is_file())
    for f in gone:
        f.unlink()
    with open(cache / FORGOTTEN, "a") as log:  # so that the store forgets them too
        log.writelines(f"{f.relative_to(cache)}\n" for f in gone)
    return gone
