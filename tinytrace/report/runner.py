"""Batch runs of the section notebooks with papermill.

:func:`run_notebooks` executes ``notebooks/*.ipynb`` into ``book/sections/``, each in its own
process (``python -m tinytrace.report.runner --worker JOB``), several at once with ``jobs``,
spread over GPUs through ``CUDA_VISIBLE_DEVICES``. A notebook is executed to a hidden file and
moved into place only on success, so a failure never replaces a good earlier result. Each
notebook writes ``<stem>.json`` (:func:`tinytrace.report.nbkit.write_results_json`); the runner
adds the seconds the notebook took.

The records of the run cache (evaluations, run metadata; :mod:`tinytrace.experiments.records`)
are kept in a store beside the executed notebooks (``<out>/records``, committed with the book):
a batch first imports what its cache lacks from it, and after each notebook, finished or not,
writes back what the cache made since the batch began and what the finished notebook used. A
fresh checkout then runs a notebook again from those records, training only runs whose
evaluations it lacks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tinytrace.experiments import get_scale
from tinytrace.experiments.records import export_records, import_records
from tinytrace.interrupt import Interrupted, stop_requests

from .sections import DEFAULT_OUT, NOTEBOOKS, ROOT, Section


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    output: Path | None = None
    error: str = ""
    cell: int | None = None
    source: str = ""
    log: Path | None = None
    gpu: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.name}: ok in {self.seconds:.1f}s -> {self.output}"
        where = f" at cell {self.cell}" if self.cell is not None else ""
        src = f"\n    {self.source.strip().splitlines()[0]}" if self.source.strip() else ""
        log = f"\n    log: {self.log}" if self.log else ""
        return f"{self.name}: FAILED in {self.seconds:.1f}s{where}: {self.error}{src}{log}"


def discover(src=None) -> dict[str, Path]:
    """The section notebooks of ``src`` (default: the repository's ``notebooks/``) by stem."""
    folder = Path(src) if src is not None else ROOT / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder {folder}")
    found = {p.stem: p for p in sorted(folder.glob("*.ipynb")) if not p.name.startswith(".")}
    if not found:
        raise FileNotFoundError(f"no notebooks in {folder}")
    return found


def select(available: dict[str, Path], only=None) -> dict[str, Path]:
    """Notebooks matching ``only`` (names, ``03``-style prefixes or name parts; comma lists ok)."""
    if not only:
        return dict(available)
    wanted = [w.strip() for item in ([only] if isinstance(only, str) else only)
              for w in item.split(",") if w.strip()]
    out = {}
    for w in wanted:
        stem = w[:-6] if w.endswith(".ipynb") else w
        hits = [n for n in available if n == stem] or \
               [n for n in available if n.split("_", 1)[0] == stem] or \
               [n for n in available if n.split("_", 1)[-1] == stem or stem in n]
        if len(hits) != 1:
            how = "matches several" if hits else "matches no"
            raise ValueError(f"--only {w!r} {how} notebook; choose from {', '.join(available)}")
        out[hits[0]] = available[hits[0]]
    return {n: available[n] for n in available if n in out}


def check_params(notebooks: dict[str, Path], names) -> None:
    """Raise ``ValueError`` when one of ``names`` is a parameter of none of ``notebooks`` (the
    names their cell tagged ``parameters`` assigns, as papermill reads them): papermill would
    inject it unused, so a misspelt name would silently change nothing."""
    names = set(names)
    if not names or not notebooks:
        return
    import papermill as pm  # heavy: only when there are names to check

    known = {k for path in notebooks.values() for k in pm.inspect_notebook(str(path))}
    unknown = sorted(names - known)
    if unknown:
        raise ValueError(f"no notebook of this run has a parameter {', '.join(unknown)}; "
                         f"their parameters: {', '.join(sorted(known)) or 'none'}")


def gpu_slots() -> list[str]:
    """The GPUs a batch run may spread notebooks over (``CUDA_VISIBLE_DEVICES`` entries)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # torch missing or broken: no GPUs to spread over
        n = 0
    if n <= 1:
        return []
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][:n]
    return [str(i) for i in range(n)]


_CHILDREN: dict[str, subprocess.Popen] = {}  # running workers, terminated on interrupt
_CHILDREN_LOCK = threading.Lock()


def _terminate_children() -> None:
    """Stop every running worker; its kernel exits with it (ipykernel watches its parent)."""
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN.values())
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()


def execute(name: str, src: Path, out: Path, params: dict, env: dict | None = None,
            timeout: float | None = None, gpu: str | None = None) -> Outcome:
    """Execute one notebook in a fresh process (papermill) into ``out/<name>.ipynb``, working
    directory ``out``. On failure the previous notebook and JSON are kept and the partial one is
    left as ``out/.<name>.failed.ipynb`` (its output in ``out/.<name>.log``)."""
    out.mkdir(parents=True, exist_ok=True)
    running, final = out / f".{name}.running.ipynb", out / f"{name}.ipynb"
    status_path, log = out / f".{name}.status.json", out / f".{name}.log"
    result, backup = out / f"{name}.json", out / f".{name}.json.previous"
    if backup.exists():  # an earlier batch was killed mid-run: the set-aside one is the good one
        os.replace(backup, result)
    if result.exists():  # a good earlier result: set aside, put back unless this run succeeds
        os.replace(result, backup)
    for p in (status_path, running):
        p.unlink(missing_ok=True)
    job = {"src": str(Path(src).resolve()), "out": str(running.resolve()),
           "cwd": str(out.resolve()), "params": params, "status": str(status_path.resolve())}
    t0 = time.perf_counter()
    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "tinytrace.report.runner", "--worker",
                                 json.dumps(job)], cwd=out, env=env, stdout=logf,
                                stderr=subprocess.STDOUT)
        with _CHILDREN_LOCK:
            _CHILDREN[name] = proc
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            rc = None
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.pop(name, None)
    seconds = time.perf_counter() - t0
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    status_path.unlink(missing_ok=True)
    error = ""
    if rc is None:
        error = f"timed out after {timeout:g}s"
    elif not status:
        error = (f"interrupted (worker exit code {rc})" if rc and rc < 0 else
                 f"worker exited with code {rc} before reporting (see the log)")
    elif not status.get("ok"):
        error = f"{status.get('ename', 'Error')}: {status.get('evalue', '')}".strip()
    elif not running.exists():
        error = "papermill wrote no output notebook"
    elif not result.exists():
        error = f"the notebook did not write {result.name}"
    if not error:
        _annotate(running, result, seconds, final)
        os.replace(running, final)
        for stale in (backup, log, out / f".{name}.failed.ipynb"):  # an earlier failure's too
            stale.unlink(missing_ok=True)
        return Outcome(name, True, seconds, final, gpu=gpu)
    if backup.exists():
        os.replace(backup, result)
    else:
        result.unlink(missing_ok=True)
    if running.exists():
        os.replace(running, out / f".{name}.failed.ipynb")
    return Outcome(name, False, seconds, None, error=error, cell=status.get("cell"),
                   source=status.get("source", ""), log=log, gpu=gpu)


def _portable(path) -> str:
    """``path`` relative to the repository when inside it: no local paths in committed files."""
    p = Path(path).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return p.name


def hide_default_parameters(nb: dict) -> dict:
    """Tag the notebook's own ``parameters`` cell ``remove-cell`` when papermill injected the
    values it ran with below it: the book then shows one parameters cell, the one that ran."""
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.get("cells", [])]
    if any("injected-parameters" in t for t in tags):
        for c, t in zip(nb["cells"], tags):
            if "parameters" in t and "remove-cell" not in t:
                c.setdefault("metadata", {})["tags"] = [*t, "remove-cell"]
    return nb


def _annotate(nb_path: Path, result: Path, seconds: float, final: Path | None = None) -> None:
    """Record scale, hardware, seed, date and seconds in the executed notebook's metadata and
    the seconds in the results JSON (plain JSON: importing nbformat costs seconds)."""
    info = json.loads(result.read_text())
    info["seconds"] = round(seconds, 1)
    tmp = result.with_name(f".{result.name}.tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str) + "\n")
    os.replace(tmp, result)
    nb = json.loads(nb_path.read_text())
    pm = nb.get("metadata", {}).get("papermill", {})
    if pm.get("input_path"):
        pm["input_path"] = _portable(pm["input_path"])
    if pm.get("output_path"):
        pm["output_path"] = _portable(final or pm["output_path"])
    meta = {k: info.get(k) for k in ("scale", "hardware", "seed", "date", "tinytrace",
                                     "paper_section")}
    meta["seconds"] = round(seconds, 1)
    nb.setdefault("metadata", {})["tinytrace"] = meta
    hide_default_parameters(nb)
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def _worker(job: dict) -> int:
    """In the child process: papermill, then a status file with the failing cell if any."""
    import papermill as pm  # heavy, and only the worker process needs it

    try:
        pm.execute_notebook(job["src"], job["out"], parameters=job["params"], cwd=job["cwd"],
                            kernel_name="python3", progress_bar=False, log_output=True)
        status = {"ok": True}
    except pm.PapermillExecutionError as e:
        status = {"ok": False, "ename": e.ename, "evalue": e.evalue, "source": e.source,
                  "cell": _source_cell(job, e.source, e.cell_index), "exec_count": e.exec_count}
    except Exception as e:  # kernel died, bad notebook, ...: reported, never raised
        status = {"ok": False, "ename": type(e).__name__, "evalue": str(e)}
    Path(job["status"]).write_text(json.dumps(status))
    return 0 if status["ok"] else 1


def _source_cell(job: dict, source: str, executed_index: int) -> int:
    """The 1-based index in the source notebook of the failing cell: papermill inserts an
    injected-parameters cell and error banners, so its own index differs."""
    import nbformat  # only on failure

    try:
        src = nbformat.read(job["src"], as_version=4).cells
        ids = [c.get("id") for c in src]
        for c in nbformat.read(job["out"], as_version=4).cells:
            if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs):
                if c.get("id") in ids:
                    return ids.index(c.get("id")) + 1
        return [c.source for c in src].index(source) + 1
    except (OSError, ValueError):
        return executed_index + 1


def run_notebooks(scale: str, only=None, jobs: int = 1, out=DEFAULT_OUT, cache_dir="cache",
                  src=None, seed: int | None = None, device: str | None = None,
                  params: dict | None = None, timeout: float | None = None,
                  missing: bool = False, records=None, train: bool = True,
                  echo=print) -> list[Outcome]:
    """Execute the selected notebooks at ``scale`` into ``out`` (``jobs`` at a time); with
    ``missing``, only those without an executed copy and results JSON in ``out`` yet.
    ``params``: more notebook parameters, each one of at least one of these notebooks
    (:func:`check_params`, before any runs). ``train`` False: every notebook gets
    ``train = False`` (its experiments train nothing; one without experiments ignores it).
    ``records``: the store of cache records (default ``out/records``; False: none), imported
    into the cache first and written after each notebook.
    SIGINT/SIGTERM start nothing more and end the running workers (their notebooks keep their
    previous results); then :class:`tinytrace.interrupt.Interrupted` is raised."""
    get_scale(scale)  # unknown scales fail here, before any notebook starts
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    todo = select(discover(src), only)
    out = Path(out)
    if missing:
        todo = {n: p for n, p in todo.items()
                if not ((out / f"{n}.ipynb").exists() and (out / f"{n}.json").exists())}
    if device is not None:  # before any notebook starts, as `experiment --device` does
        from tinytrace.train.common import check_device  # torch: only when a device is named

        check_device(device)
    check_params(todo, params or {})
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve()
    p = {"scale": scale, "cache_dir": os.path.relpath(cache, out.resolve()), "progress": False}
    if seed is not None:
        p["seed"] = seed
    if device is not None:
        p["device"] = device
    p.update(params or {})
    if not train:
        p["train"] = False
    store = None if records is False else Path(out / "records" if records is None else records)
    if store is not None:
        n = import_records(store, cache)
        if n:
            echo(f"records: {n} imported from {store} into {cache} (a run that came without "
                 "its weights trains again only where an evaluation of it is missing)")
    since, store_lock = time.time(), threading.Lock()

    def keep_records(res: Outcome) -> None:
        """What the cache made since the batch began, and what a finished notebook used."""
        if store is None:
            return
        try:
            used = ()
            if res.ok:
                info = json.loads((out / f"{res.name}.json").read_text())
                used = (info.get("compute") or {}).get("artifacts", {})
            with store_lock:
                n = export_records(cache, store, since=since, used=used)
            if n:
                echo(f"records: {n} written to {store} after {res.name}")
        except (OSError, ValueError) as e:  # the notebook's outcome stands; say what was not kept
            echo(f"records: not written after {res.name}: {type(e).__name__}: {e}")

    gpus = gpu_slots() if jobs > 1 else []
    base_env = dict(os.environ)
    base_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + base_env.get("PATH", "")
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    if jobs > 1 and not gpus and "OMP_NUM_THREADS" not in base_env:
        # CPU: split the cores between concurrent notebooks instead of oversubscribing them
        base_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    names = list(todo)
    pending, running, outcomes = list(names), {}, []
    cond = threading.Condition()
    free_slots = list(range(jobs))
    t_start = time.perf_counter()
    echo(f"notebooks: {len(names)} at scale {scale!r} into {out} ({jobs} at a time"
         + (f", GPUs {','.join(gpus)}" if gpus else "") + ")")

    # a dependency outside the batch: one notebook of those needing it (one that runs the same
    # experiment if any, e.g. 05 for 02's "base") builds the shared cached artifacts alone first
    def sec(n: str) -> Section:
        return NOTEBOOKS.get(n, Section("", ""))

    leader: dict[str, str] = {}
    for d in {d for n in names for d in sec(n).after} - set(names):
        group = [n for n in names if d in sec(n).after]
        same = [n for n in group if set(sec(n).experiments) & set(sec(d).experiments)]
        leader[d] = (same or group)[0]

    def ready(name: str) -> bool:
        for d in sec(name).after:
            blocker = d if d in names else leader[d]
            if blocker != name and (blocker in running or blocker in pending):
                return False
        return True

    def work(name: str, slot: int):
        env = dict(base_env)
        gpu = gpus[slot % len(gpus)] if gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        t0 = time.perf_counter()
        try:
            res = execute(name, todo[name], out, p, env=env, timeout=timeout, gpu=gpu)
        except Exception as e:  # the runner itself failed (disk full, ...): report, go on
            res = Outcome(name, False, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
        keep_records(res)
        with cond:
            outcomes.append(res)
            running.pop(name, None)
            free_slots.append(slot)
            echo(f"[{len(outcomes)}/{len(names)}] {res.line()} "
                 f"(elapsed {time.perf_counter() - t_start:.0f}s)")
            cond.notify_all()

    threads, stopping = [], False
    with stop_requests() as stop, cond:
        while pending or running:
            if stop and not stopping:  # Ctrl-C / SIGTERM: start nothing more, stop the workers
                stopping = True
                echo(f"interrupted: stopping {', '.join(running) or 'nothing'}; "
                     f"not started: {', '.join(pending) or 'none'}")
                pending.clear()
                _terminate_children()
            startable = [n for n in pending if ready(n)] if free_slots else []
            if not startable:
                cond.wait(timeout=1.0)
                continue
            name = startable[0]
            pending.remove(name)
            slot = free_slots.pop(0)
            running[name] = slot
            gpu = gpus[slot % len(gpus)] if gpus else None
            echo(f"[start] {name}" + (f" on GPU {gpu}" if gpu is not None else ""))
            t = threading.Thread(target=work, args=(name, slot), daemon=True)
            threads.append(t)
            t.start()
    for t in threads:
        t.join()
    order = {n: i for i, n in enumerate(names)}
    outcomes.sort(key=lambda o: order[o.name])
    bad = [o for o in outcomes if not o.ok]
    echo(f"notebooks: {len(outcomes) - len(bad)} ok, {len(bad)} failed in "
         f"{time.perf_counter() - t_start:.0f}s" + (": " + ", ".join(o.name for o in bad) if bad else ""))
    if stop:
        raise Interrupted(stop.signum, f"{len(outcomes) - len(bad)} notebook(s) finished and kept "
                                       f"in {out}, the others not run", resume_flag="--missing")
    return outcomes


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(json.loads(sys.argv[2])))
    sys.exit("usage: tinytrace notebooks run --scale SCALE (this module's own entry is internal)")
