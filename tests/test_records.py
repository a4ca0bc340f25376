"""The store of cache records (evaluations, robustness rows, run metadata) that survives a fresh
checkout: a fresh cache with only the store reruns experiments and notebooks without training;
a run that came without its weights trains again where an evaluation of it is missing; the
notebook runner writes the store after every notebook, a failed one too."""
import gzip
import json
import logging
import shutil

import nbformat
import pytest

from tinytrace.experiments import get_scale, run_experiment
from tinytrace.experiments.cache import NotTrained, WeightsMissing, _key
from tinytrace.experiments.records import (FORGOTTEN, export_records, forget, import_records,
                                           record_files)
from tinytrace.report import runner


def _evals_of(cache, run: str) -> list:
    return sorted(f.name for f in cache.glob("eval-*.json")
                  if json.loads(f.read_text()).get("run", "").startswith(run))


def _mark(evaluation) -> None:
    """An impossible EM in a cached evaluation, to tell one kept from one made again."""
    evaluation.write_text(json.dumps({**json.loads(evaluation.read_text()), "exact_match": -1.0}))


def test_a_fresh_cache_reruns_an_experiment_from_the_store_without_training(tmp_path):
    c1, c2, store = tmp_path / "c1", tmp_path / "c2", tmp_path / "store"
    first = run_experiment("id_robustness", "smoke", cache_dir=c1, progress=False)
    assert export_records(c1, store) > 0
    stored = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert all(p.endswith(".gz") for p in stored)
    assert any(p.endswith(".rows.json.gz") for p in stored)  # the per-epoch rows
    assert any(p.startswith("run-") and p.endswith("/log.jsonl.gz") for p in stored)
    assert not any("safetensors" in p or p.startswith("corpus-") or "/state" in p or "/epoch-" in p
                   for p in stored)
    before = {p: (store / p).read_bytes() for p in stored}
    assert export_records(c1, store) == 0  # unchanged records keep their bytes
    assert {p: (store / p).read_bytes() for p in stored} == before
    assert gzip.decompress(before[stored[0]]) == (c1 / stored[0][:-3]).read_bytes()
    assert all(b[4:8] == bytes(4) for b in before.values())  # no time in the gzip headers

    assert import_records(store, c2) == len(stored)
    again = run_experiment("id_robustness", "smoke", cache_dir=c2, progress=False)
    assert not list(c2.glob("run-*/model.safetensors"))  # nothing trained
    cols = [c for c in first.columns if c != "hardware"]
    assert again[cols].equals(first[cols])
    assert import_records(store, c2) == 0  # what the cache has wins

    # a per-epoch evaluation missing (its weights are gone): that robustness run trains again
    run = next(p.name for p in c2.glob("run-*") if p.is_dir())
    s = get_scale("smoke")  # the key of its epoch-1 evaluation on the unaltered test (Cache.evaluate)
    key = [f"{run}-e1", "base", s.max_len_factor] + (["eos_prefix"] if s.eval_eos_prefix else [])
    per_epoch = c2 / f"eval-{_key(key)}.json"
    stale = c2 / "eval-stale.json"  # an evaluation of that run which nothing makes again
    stale.write_text(json.dumps({"run": f"{run}-e2", "exact_match": 0.0}))
    export_records(c2, store)
    assert (store / "eval-stale.json.gz").is_file()
    per_epoch.unlink()
    again = run_experiment("id_robustness", "smoke", cache_dir=c2, progress=False)
    assert [p.parent.name for p in c2.glob("run-*/model.safetensors")] == [run]
    assert len(again) == len(first) and per_epoch.exists()
    # the store forgets what the cache forgot and did not make again, and takes the new ones
    forgotten = (c2 / FORGOTTEN).read_text().split()
    assert f"{run}/done.json" in forgotten
    assert "eval-stale.json" in forgotten and not stale.exists()
    export_records(c2, store)
    assert all((store / f"{rel}.gz").is_file() == (c2 / rel).exists() for rel in forgotten)
    assert not (store / "eval-stale.json.gz").exists()
    assert gzip.decompress((store / run / "done.json.gz").read_bytes()) == (
        c2 / run / "done.json").read_bytes()


def test_a_run_the_cache_has_keeps_its_own_folder_and_only_finished_runs_are_stored(tmp_path):
    c1, c2, store = tmp_path / "c1", tmp_path / "c2", tmp_path / "store"
    run_experiment("base", "smoke", cache_dir=c1, progress=False)
    run = next(p.name for p in c1.glob("run-*") if p.is_dir())
    (c2 / run).mkdir(parents=True)  # interrupted here: a checkpoint, no done marker
    (c2 / run / "log.jsonl").write_text("{}\n")
    (c2 / run / "model.safetensors").write_bytes(b"partial")
    export_records(c1, store)
    assert import_records(store, c2) > 0
    assert sorted(p.name for p in (c2 / run).iterdir()) == ["log.jsonl", "model.safetensors"]
    assert not [r for r in record_files(c2) if r.parts[0] == run]  # unfinished: not a record
    # an evaluation cached before evaluations named their run gets its name when read
    ev = next(c1.glob("eval-*.json"))
    ev.write_text(json.dumps({k: v for k, v in json.loads(ev.read_text()).items() if k != "run"}))
    run_experiment("base", "smoke", cache_dir=c1, progress=False)
    assert json.loads(ev.read_text())["run"] == run


def test_a_run_without_weights_trains_again_where_an_evaluation_is_missing(tmp_path, caplog):
    c1, c2, store = tmp_path / "c1", tmp_path / "c2", tmp_path / "store"
    run_experiment("base", "smoke", cache_dir=c1, progress=False)
    run = next(p for p in c1.glob("run-*") if p.is_dir())
    with pytest.raises(ValueError, match="has its weights"):
        forget(run)
    evals = _evals_of(c1, run.name)
    assert len(evals) >= 3  # the ID, longer and deeper test sets
    export_records(c1, store)
    import_records(store, c2)
    stale = c2 / evals[1]
    _mark(stale)
    (c2 / evals[0]).unlink()  # e.g. a changed notebook asks for an evaluation not cached
    # training nothing (a GPU slot's section unit, --no-train): it fails and forgets nothing
    with pytest.raises(WeightsMissing, match=run.name):
        run_experiment("base", "smoke", cache_dir=c2, progress=False, train=False)
    assert (c2 / run.name / "done.json").exists() and not (c2 / FORGOTTEN).exists()
    assert json.loads(stale.read_text())["exact_match"] == -1.0
    with caplog.at_level(logging.WARNING):
        df = run_experiment("base", "smoke", cache_dir=c2, progress=False)
    assert "came without its weights" in caplog.text
    assert (c2 / run.name / "model.safetensors").exists()  # trained again
    # the evaluations of the weights that are gone were dropped, not mixed with the new ones'
    assert json.loads(stale.read_text())["exact_match"] != -1.0
    assert _evals_of(c2, run.name) == evals and (df["exact_match"] >= 0).all()


def test_training_nothing_fails_at_the_first_run_not_in_the_cache(tmp_path):
    with pytest.raises(NotTrained, match="is not trained"):
        run_experiment("base", "smoke", cache_dir=tmp_path, progress=False, train=False)
    assert not list(tmp_path.glob("run-*/log.jsonl"))  # not a step trained
    assert list(tmp_path.glob("corpus-*/data/build.json"))  # its data is made, seeded


def _notebook(path, cells):
    """A notebook of code ``cells``, the first tagged ``parameters``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


def test_the_runner_keeps_the_records_of_a_notebook_that_failed(tmp_path):
    """Work a notebook finished before it failed (or was stopped) is in the store: the runs it
    trained need not be trained again after a fresh checkout."""
    src = tmp_path / "src"
    src.mkdir()
    _notebook(src / "99_fails.ipynb", [
        'scale = "smoke"\ncache_dir = "cache"\nprogress = False\nseed = 0',
        "from tinytrace.experiments import base_run_dir\nbase_run_dir(scale, cache_dir)",
        'raise RuntimeError("after training")'])
    out, cache = tmp_path / "out", tmp_path / "cache"
    [res] = runner.run_notebooks("smoke", out=out, cache_dir=cache, src=src, echo=lambda s: None)
    assert not res.ok and "after training" in res.error
    run = next(p.name for p in cache.glob("run-*") if p.is_dir())
    assert (out / "records" / run / "done.json.gz").is_file()
    assert [str(p) for p in record_files(cache)] == sorted(
        str(p.relative_to(out / "records"))[:-3] for p in (out / "records").rglob("*.gz"))
    [res] = runner.run_notebooks("smoke", out=tmp_path / "out2", cache_dir=cache, src=src,
                                 records=False, echo=lambda s: None)  # no store
    assert not res.ok and not (tmp_path / "out2" / "records").exists()


def test_listing_the_records_skips_what_another_process_removes_meanwhile(tmp_path, monkeypatch):
    """Two notebooks (``--jobs``) or test workers share a cache: a run folder that another
    process removes while the records are listed is left out, not an error."""
    from tinytrace.experiments import records as R

    cache = tmp_path / "cache"
    runs = [cache / "run-a", cache / "run-b"]
    for run in runs:
        run.mkdir(parents=True)
        (run / "done.json").write_text("{}")
        (run / "config.json").write_text("{}")
    (cache / "eval-x.json").write_text("{}")
    listed = R._entries

    def racing(folder):
        out = listed(folder)
        if folder == cache:
            shutil.rmtree(runs[1])  # gone between the cache's listing and the run's
        return out

    monkeypatch.setattr(R, "_entries", racing)
    assert [str(p) for p in record_files(cache)] == ["eval-x.json", "run-a/config.json",
                                                     "run-a/done.json"]
    assert listed(tmp_path / "gone") == []


def test_a_notebook_reruns_from_the_store_on_a_fresh_cache(tmp_path, smoke_batch):
    out1, proc, _ = smoke_batch  # the book at smoke, its store in the default place
    out2, cache2 = tmp_path / "out2", tmp_path / "cache2"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    used = json.loads((out1 / "02_model_data_training.json").read_text())["compute"]["artifacts"]
    # the records it used are stored, made in this batch or before it (the shared cache)
    assert {n for n in used if not n.startswith("corpus-")} <= {
        p.relative_to(out1 / "records").parts[0].removesuffix(".gz")
        for p in (out1 / "records").rglob("*.gz")}
    lines, store = [], shutil.copytree(out1 / "records", tmp_path / "store")  # fixture unchanged
    [res] = runner.run_notebooks("smoke", only="02", out=out2, cache_dir=cache2, records=store,
                                 echo=lines.append)
    assert res.ok, res.line()
    assert any("imported from" in line for line in lines)
    assert not list(cache2.glob("run-*/model.safetensors"))  # nothing trained
    r1, r2 = (json.loads((o / "02_model_data_training.json").read_text())["results"]
              for o in (out1, out2))
    assert r1 == r2


def test_fine_tuning_from_a_base_run_without_weights_trains_the_base_run_again(tmp_path):
    c1, c2, store = tmp_path / "c1", tmp_path / "c2", tmp_path / "store"
    run_experiment("base", "smoke", cache_dir=c1, progress=False)
    export_records(c1, store)
    import_records(store, c2)
    df = run_experiment("sft_lora", "smoke", cache_dir=c2, progress=False)
    assert len(df) and list(c2.glob("run-*/model.safetensors"))  # the base run, trained again
    assert list(c2.glob("sft-*/model.safetensors"))


def test_fine_tuning_runs_are_forgotten_with_the_base_run_they_started_from(tmp_path):
    """A base run trained again may differ from the one the imported fine-tuning runs started
    from: they are trained again from it, not kept with the old one's evaluations."""
    c1, c2, store = tmp_path / "c1", tmp_path / "c2", tmp_path / "store"
    run_experiment("sft_lora", "smoke", cache_dir=c1, progress=False)
    base = next(p.name for p in c1.glob("run-*") if p.is_dir())
    sft = sorted(p.name for p in c1.glob("sft-*") if (p / "done.json").is_file())
    assert sft
    export_records(c1, store)
    import_records(store, c2)
    sft_evals = [e for name in sft for e in _evals_of(c2, name)]
    assert sft_evals
    for e in sft_evals:
        _mark(c2 / e)
    (c2 / _evals_of(c2, base)[0]).unlink()  # the base run needs its weights
    df = run_experiment("sft_lora", "smoke", cache_dir=c2, progress=False)
    assert (c2 / base / "model.safetensors").exists()
    assert all((c2 / name / "model.safetensors").exists() for name in sft)  # trained again
    assert all(json.loads((c2 / e).read_text())["exact_match"] >= 0 for e in sft_evals)
    assert (df["exact_match"] >= 0).all()
    forgotten = (c2 / FORGOTTEN).read_text().split()
    assert {f"{name}/done.json" for name in sft} <= set(forgotten)
