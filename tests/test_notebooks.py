"""The section notebooks and their papermill runner.

Committed notebooks are clean and parameterized; every one executes at smoke scale through
``tinytrace notebooks run`` and writes its results JSON; a failing notebook is reported with its
cell and never replaces a good earlier result; several jobs spread over GPUs and wait for the
section that builds the shared base model.
"""
from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from tinytrace.cli import main
from tinytrace.experiments import measured, run_experiment, training_tokens
from tinytrace.report import nbkit, pages, paper, runner
from tinytrace.provenance import code_dirty
from tinytrace.report.sections import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED_PARAMS = {"scale", "seed", "cache_dir", "device", "results_dir"}


def _read(path):
    return nbformat.read(path, as_version=4)


def _param_cells(nb):
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_registry_matches_the_notebooks():
    assert [p.stem for p in SOURCES] == list(NOTEBOOKS)
    assert set(runner.discover()) == set(NOTEBOOKS)
    assert nbkit.NOTEBOOKS is NOTEBOOKS  # one registry, also what notebooks see


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "papermill" not in nb.metadata and "tinytrace" not in nb.metadata
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
            ast.parse(cell.source)  # plain Python: runs in Colab, papermill and as a script
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "Sec." in first.source.split("\n\n")[1]  # the paper section, right under the title
    assert f"colab.research.google.com/github/tinytrace/tinytrace/blob/main/notebooks/{path.name}" in first.source


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_one_parameters_cell_of_plain_literals(path):
    nb = _read(path)
    cells = _param_cells(nb)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    names = {}
    for stmt in ast.parse(cells[0].source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
        names[stmt.targets[0].id] = ast.literal_eval(stmt.value)  # raises unless a literal
    assert REQUIRED_PARAMS <= set(names)
    assert names["scale"] in ("smoke", "cpu", "cpu-long", "gpu", "paper") and names["device"] is None
    # the next code cell installs the package in Colab only, then shows scale and hardware
    idx = nb.cells.index(cells[0])
    setup = nb.cells[idx + 1].source
    assert 'if "google.colab" in sys.modules' in setup and "pip" in setup
    if path.stem == "06_ablations":  # LoRA needs the extra with peft
        assert '"tinytrace[lora] @ git+https://github.com/tinytrace/tinytrace"' in setup
    assert "nb.banner(scale, hardware, seed)" in setup
    assert "from tinytrace.report import nbkit as nb" in setup
    imported = {n.module for c in nb.cells if c.cell_type == "code"
                for n in ast.walk(ast.parse(c.source)) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m.startswith("tinytrace")} <= {
        "tinytrace.report", "tinytrace.experiments", "tinytrace.bench"}
    body = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'nb.write_results_json("{path.stem}"' in body
    assert nb.cells[-1].source.endswith("print(nb.written(path))")  # what the section's work cost
    if path.stem != "01_task_and_generator":
        assert "nb.comparison(" in body  # the paper-vs-ours table from tinytrace.report.paper.compare


# --- the smoke batch: every notebook through `tinytrace notebooks run` ----------------------------
def test_smoke_batch_succeeds(smoke_batch):
    out, proc, seconds = smoke_batch
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stem in NOTEBOOKS:
        assert f"{stem}: ok in" in proc.stdout  # one progress line per notebook, with its time
    assert "6 ok, 0 failed" in proc.stdout
    print(f"smoke batch: {seconds:.0f}s")


@pytest.mark.parametrize("stem", list(NOTEBOOKS))
def test_smoke_notebook_outputs(smoke_batch, stem):
    out, proc, _ = smoke_batch
    executed, result = out / f"{stem}.ipynb", out / f"{stem}.json"
    assert executed.exists() and result.exists(), proc.stdout + proc.stderr
    assert str(ROOT) not in executed.read_text() + result.read_text()  # no local paths
    nb = _read(executed)
    assert nb.metadata["tinytrace"]["scale"] == "smoke"
    assert nb.metadata["papermill"]["parameters"]["scale"] == "smoke"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "**Scale:** `smoke`" in text and "hardware:" in text and "scaled-down task" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"
    doc = json.loads(result.read_text())
    assert doc["notebook"] == stem and doc["scale"] == "smoke" and doc["seed"] == 0
    assert doc["hardware"].startswith(("CPU: ", "GPU: ")) and doc["date"]
    assert doc["paper_vs_ours"] and doc["results"]
    assert doc["seconds"] == nb.metadata["tinytrace"]["seconds"] > 0  # the runner's measurement
    for row in doc["paper_vs_ours"]:
        assert {"experiment", "key", "kind", "what", "section", "paper", "this run", "scale"} <= set(row)
        # generator rows say what they were computed on: the paper's preset or the scale's task
        assert row["scale"] == "smoke" or row["experiment"] == "generator" and row["scale"] in (
            "the paper's `base` preset", "the `smoke` ID task")
    for experiment in NOTEBOOKS[stem].experiments:
        rows = doc["results"][experiment]
        assert rows and {"exact_match", "test_set", "scale", "hardware"} <= set(rows[0])
        keys = [r["key"] for r in doc["paper_vs_ours"]
                if r["experiment"] == experiment and r["kind"] != "setup"]
        assert keys == [r.key for r in paper.REPORTED
                        if r.experiment == experiment and r.kind != "setup"]
    assert not list(out.glob(f".{stem}.*")), "leftovers of a successful run"


def test_results_page_from_smoke_batch(smoke_batch, tmp_path):
    out, _, _ = smoke_batch
    page = pages.write_results_page(out, tmp_path / "results.md").read_text()
    assert "not run yet" not in page
    assert page.count("`smoke`") >= len(NOTEBOOKS)
    assert "| what | paper section | paper | this run | scale |" in page
    assert "100.00%" in page  # the paper's ID exact match, formatted as a percentage
    rows = {line.split(" | ")[0]: line for line in pages.scales_markdown(out).splitlines()}
    assert "6 of 6 sections: " in rows["| `smoke`"] and rows["| `paper`"].endswith("| not measured |")


def test_measured_time_comes_from_results():
    results = {"02": {"scale": "cpu", "seconds": 600.0, "hardware": "CPU: x"},
               "03": {"scale": "cpu", "seconds": 300.0, "hardware": "CPU: x"},
               "04": {"scale": "smoke", "seconds": None, "hardware": "CPU: x"}}
    assert pages.measured_time("cpu", results) == ("2 of 6 sections: 15 min of notebook time on "
                                                   "CPU: x (last executions; work they found "
                                                   "cached is not counted)")
    assert pages.measured_time("smoke", results) == "not measured"
    assert pages.measured_time("paper", {}) == "not measured"
    # with each section's compute, a run two sections share (the base run) counts once
    base = {"run-base": ["train", 600.0], "corpus-base": ["data", 30.0]}
    results["02"]["compute"] = {"artifacts": {**base, "eval-a.json": ["evaluate", 30.0]}}
    results["03"]["compute"] = {"artifacts": {**base, "run-rob": ["train", 540.0],
                                              "corpus-old": ["data", None]}}
    assert pages.measured_time("cpu", results) == (
        "2 of 6 sections: 20 min of training, evaluation and data on CPU: x (19 / 1 / 0 min; "
        "what each run, evaluation and corpus cost when it was made, each once, cached or not; "
        "not counted: 1 made before costs were recorded); 15 min of notebook "
        "time in their last executions")
    # a section that used nothing, executed on other hardware, adds its time, not its hardware
    results["01"] = {"scale": "cpu", "seconds": 60.0, "hardware": "CPU: y",
                     "compute": {"artifacts": {}}}
    assert pages.measured_time("cpu", results).startswith(
        "3 of 6 sections: 20 min of training, evaluation and data on CPU: x (19 / 1 / 0 min;")
    assert pages.measured_time("cpu", results).endswith("; 16 min of notebook time in their "
                                                        "last executions")


def test_the_minutes_shown_add_up_to_the_total_shown():
    # the committed cpu-long book's costs: rounded one by one they read 720 / 9 / 4 of 734
    assert pages.whole_minutes([43_220.7, 535.8, 259.8]) == (734, [721, 9, 4])
    assert pages.whole_minutes([43_224, 564, 264]) == (734, [721, 9, 4])  # a tie: the first
    assert pages.whole_minutes([1140, 30, 30]) == (20, [19, 1, 0])
    assert pages.whole_minutes([0, 0, 0]) == (0, [0, 0, 0])
    for parts in ([59.0, 59.0, 59.0], [89.0, 29.0, 1.0], [3599.0, 0.4, 0.4], [10.0, 20.0, 29.0]):
        total, shown = pages.whole_minutes(parts)
        assert sum(shown) == total and all(abs(m - p / 60) < 1 for m, p in zip(shown, parts))


def test_a_section_says_what_the_work_it_used_cost(tmp_path):
    """The last line of a section: its results file and the minutes its runs, evaluations and
    corpora cost when made (parts that add up to the total), cached or not."""
    path = tmp_path / "05.json"
    path.write_text(json.dumps({"compute": {"artifacts": {
        "run-a": ["train", 6000.0], "run-b": ["train", 125.7], "eval-a.json": ["evaluate", 92.0],
        "corpus-a": ["data", 13.1]}}}))
    assert nbkit.written(path) == (
        f"results written to {path}. The runs, evaluations and corpora this section used cost "
        "104 min when they were made (102 / 2 / 0 min of training, evaluation and data), "
        "whether this execution made them or found them cached.")
    path.write_text(json.dumps({"compute": {"artifacts": {"run-a": ["train", None],
                                                          "corpus-a": ["data", None]}}}))
    assert "(0 / 0 / 0 min of training, evaluation and data; 2 made before costs were recorded " \
           "are not counted)" in nbkit.written(path)
    for nothing in ({"compute": {"artifacts": {}}}, {"compute": None}, {}):  # used nothing
        path.write_text(json.dumps(nothing))
        assert nbkit.written(path) == f"results written to {path}"
    # the minutes come from the artifacts, each once
    path.write_text(json.dumps({"compute": {"artifacts": {"run-a": ["train", 600.0],
                                                          "eval-a.json": ["evaluate", 60.0]}}}))
    assert "cost 11 min when they were made (10 / 1 / 0 min of" in nbkit.written(path)


def test_results_say_whether_the_code_had_uncommitted_edits(tmp_path):
    """``git_commit`` names the code that made a section's results only when the package and
    notebooks match it: ``code_dirty`` says so, and the outputs a render writes do not count."""
    repo = tmp_path / "repo"
    for f in ("tinytrace/x.py", "notebooks/a.ipynb", "book/sections/a.json"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("0\n")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    assert code_dirty(repo) is False
    (repo / "book/sections/a.json").write_text("1\n")
    assert code_dirty(repo) is False
    (repo / "notebooks/a.ipynb").write_text("1\n")
    assert code_dirty(repo) is True
    git("commit", "-qam", "y")
    (repo / "tinytrace/x.py").write_text("1\n")
    assert code_dirty(repo / "book") is True  # from anywhere in the checkout
    (tmp_path / "plain").mkdir()
    assert code_dirty(tmp_path / "plain") is None
    import pandas as pd

    doc = json.loads(nbkit.write_results_json("s", scale="smoke", seed=0, hardware="x",
                                              comparison=pd.DataFrame(), results={},
                                              results_dir=tmp_path).read_text())
    assert doc["code_dirty"] == code_dirty()


def test_a_section_reports_the_same_compute_cold_and_warm(tmp_path):
    """What the artifacts an experiment used cost is recorded with them: a rerun that finds
    them cached reports the same seconds, and the evaluations a robustness run makes while it
    trains are counted once (in its training seconds), cold or warm."""
    from tinytrace.experiments import cache as C

    C.USED.clear()
    run_experiment("id_robustness", "smoke", cache_dir=tmp_path, progress=False)
    cold = C.compute_used()
    C.USED.clear()
    run_experiment("id_robustness", "smoke", cache_dir=tmp_path, progress=False)
    warm = C.compute_used()
    C.USED.clear()
    assert cold == warm and cold["unrecorded"] == 0
    assert cold["train"] > 0 and cold["data"] > 0 and cold["evaluate"] == 0
    kinds = {k.split("-")[0]: kind for k, (kind, _) in cold["artifacts"].items()}
    assert kinds == {"corpus": "data", "run": "train"}


# --- failures ------------------------------------------------------------------------------------
TOY = [
    ("markdown", "# Toy\n\nA notebook that fails on demand."),
    ("code", 'scale = "cpu"\nseed = 0\ncache_dir = "cache"\ndevice = None\nresults_dir = "."\n'
             "fail = False", "parameters"),
    ("code", "import pandas as pd\n\nfrom tinytrace.report import nbkit as nb"),
    ("code", 'if fail:\n    raise RuntimeError("deliberate failure")'),
    ("code", 'nb.write_results_json("07_toy", scale=scale, seed=seed, hardware="none",\n'
             '                      comparison=pd.DataFrame(), results={"x": pd.DataFrame({"a": [1]})})'),
]


def _toy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (kind, src, *tags) in enumerate(TOY):
        cell = nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        cell.id = f"toy-{i}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path = folder / "07_toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_failure_reported_with_cell_and_keeps_good_result(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _toy(src)
    base = ["notebooks", "run", "--scale", "smoke", "--src", str(src), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(base + ["-p", "fail=false"]) == 0
    good_nb, good_json = (out / "07_toy.ipynb").read_bytes(), (out / "07_toy.json").read_bytes()
    capsys.readouterr()

    assert main(base + ["-p", "fail=true"]) == 1
    printed = capsys.readouterr().out
    assert "07_toy: FAILED" in printed
    assert "at cell 4" in printed  # the source notebook's 4th cell (papermill's index differs)
    assert "RuntimeError: deliberate failure" in printed
    assert "if fail:" in printed  # the first line of the failing cell
    assert (out / "07_toy.ipynb").read_bytes() == good_nb
    assert (out / "07_toy.json").read_bytes() == good_json
    failed = nbformat.read(out / ".07_toy.failed.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in failed.cells if c.cell_type == "code" for o in c.outputs)
    # --missing skips notebooks already executed into --out (what `make book` relies on)
    assert main(base + ["--missing"]) == 0
    assert "notebooks: 0 at scale" in capsys.readouterr().out
    # a later success clears the failure's leftovers
    assert main(base + ["-p", "fail=false"]) == 0
    assert not (out / ".07_toy.failed.ipynb").exists() and not (out / ".07_toy.log").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_experiment_call_obeys_the_train_parameter(path):
    """``--no-train`` (``train = False``) must reach every experiment a notebook runs."""
    nb = _read(path)
    calls = [n for c in nb.cells if c.cell_type == "code" for n in ast.walk(ast.parse(c.source))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_experiment"]
    if calls:
        assert "train = True" in _param_cells(nb)[0].source
    for call in calls:
        assert any(k.arg == "train" and getattr(k.value, "id", None) == "train"
                   for k in call.keywords), ast.unparse(call)


def test_no_train_fails_a_section_whose_runs_are_not_cached(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["notebooks", "run", "--scale", "smoke", "--only", "03", "--out", str(tmp_path / "out"),
            "--cache-dir", str(cache), "--no-records", "--no-train"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "03_id_robustness: FAILED" in printed and "NotTrained" in printed
    assert not list(cache.glob("run-*/log.jsonl"))  # not a step trained


def test_bad_arguments_are_clear(tmp_path, capsys):
    assert main(["notebooks", "run", "--scale", "smoke", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "matches no notebook" in capsys.readouterr().err
    assert main(["notebooks", "run", "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["notebooks", "run", "--scale", "smoke", "--jobs", "0"])


def test_unknown_parameter_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    """``-p NAME=VALUE``: NAME must be a parameter of a notebook the call runs, else one line
    lists theirs and nothing runs; ``--no-train`` reaches every notebook, 01 included."""
    ran = []

    def fake_execute(name, src_path, out, params, **kw):
        ran.append((name, params))
        return runner.Outcome(name, True, 0.0, out / f"{name}.ipynb")

    monkeypatch.setattr(runner, "execute", fake_execute)
    out = tmp_path / "out"
    base = ["notebooks", "run", "--scale", "smoke", "--out", str(out), "--no-records"]
    assert main(base + ["-p", "nosuchparam=3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "has a parameter nosuchparam; their parameters: bench_seconds, cache_dir" in lines[0]
    assert not ran and not out.exists()
    assert main(base + ["--only", "02", "-p", "n_snippets=50"]) == 2  # 01's, not 02's
    assert ("their parameters: cache_dir, device, progress, results_dir, scale, seed, train"
            in capsys.readouterr().err)
    assert main(base + ["--only", "01,02", "-p", "n_snippets=50", "--no-train"]) == 0
    assert [n for n, _ in ran] == ["01_task_and_generator", "02_model_data_training"]
    assert all(p["n_snippets"] == 50 and p["train"] is False for _, p in ran)


def test_pages_check_says_when_the_pages_are_up_to_date(tmp_path, capsys):
    book = tmp_path / "book"
    book.mkdir()
    argv = ["notebooks", "pages", "--book", str(book), "--sections", str(ROOT / "book" / "sections"),
            "--data", str(ROOT / "data" / "tinytracing")]
    assert main(argv + ["--check"]) == 1
    assert "out of date:" in capsys.readouterr().out and not list(book.glob("*.md"))
    assert main(argv) == 0
    assert {p.name for p in book.glob("*.md")} == {"results.md", "datasets.md", "performance.md",
                                                   "gpu_scale.md"}
    capsys.readouterr()
    assert main(argv + ["--check"]) == 0
    assert capsys.readouterr().out == "pages up to date\n"


def test_only_matches_stems_prefixes_and_names():
    avail = runner.discover()
    assert list(runner.select(avail, ["03"])) == ["03_id_robustness"]
    assert list(runner.select(avail, ["ood,01_task_and_generator"])) == ["01_task_and_generator", "05_ood"]
    assert list(runner.select(avail, ["06_ablations.ipynb"])) == ["06_ablations"]


def test_jobs_spread_over_gpus_and_wait_for_the_base_model(tmp_path, monkeypatch):
    """Four GPUs, three jobs: each concurrent notebook gets its own GPU, and the sections that
    reuse the base model start only after 02 has finished."""
    src = tmp_path / "src"
    src.mkdir()
    for stem in NOTEBOOKS:
        (src / f"{stem}.ipynb").write_text("{}")
    events, lock = [], threading.Lock()

    def fake_execute(name, src_path, out, params, env=None, timeout=None, gpu=None):
        with lock:
            events.append(("start", name, env.get("CUDA_VISIBLE_DEVICES"), time.perf_counter()))
        time.sleep(0.3 if name in ("02_model_data_training", "05_ood") else 0.05)
        with lock:
            events.append(("end", name, env.get("CUDA_VISIBLE_DEVICES"), time.perf_counter()))
        return runner.Outcome(name, True, 0.1, out / f"{name}.ipynb", gpu=gpu)

    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(runner, "gpu_slots", lambda: ["0", "1", "2", "3"])
    lines = []
    outcomes = runner.run_notebooks("smoke", jobs=3, out=tmp_path / "out", src=src, echo=lines.append)
    assert all(o.ok for o in outcomes) and len(outcomes) == 6
    starts = {n: (g, t) for kind, n, g, t in events if kind == "start"}
    ends = {n: t for kind, n, g, t in events if kind == "end"}
    for stem, sec in NOTEBOOKS.items():
        for dep in sec.after:
            assert starts[stem][1] >= ends[dep], f"{stem} started before {dep} finished"
    running = {}
    for kind, name, gpu, _ in sorted(events, key=lambda e: e[3]):
        if kind == "start":
            assert gpu not in running.values(), "two concurrent notebooks on one GPU"
            running[name] = gpu
        else:
            running.pop(name)
    assert {g for g, _ in starts.values()} <= {"0", "1", "2"}
    assert sum(line.startswith("[start]") for line in lines) == 6

    # without 02 in the batch, 05 (which also runs "base") builds the base model alone first
    events.clear()
    runner.run_notebooks("smoke", only=["03,04,05,06"], jobs=3, out=tmp_path / "out", src=src,
                      echo=lines.append)
    starts = {n: t for kind, n, g, t in events if kind == "start"}
    ends = {n: t for kind, n, g, t in events if kind == "end"}
    assert starts["03_id_robustness"] >= ends["05_ood"]
    assert starts["06_ablations"] >= ends["05_ood"]
    assert starts["04_coverage"] >= ends["05_ood"]  # its reference: the base model at most scales


def test_signal_stops_the_batch_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a batch: nothing more starts, the running workers are ended, the handlers
    come back, and the command prints one line with the command that continues (--missing)
    and exits 130."""
    src = tmp_path / "src"
    src.mkdir()
    for stem in NOTEBOOKS:
        (src / f"{stem}.ipynb").write_text("{}")
    started, ended = [], []

    def fake_execute(name, src_path, out, params, env=None, timeout=None, gpu=None):
        started.append(name)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first notebook runs
        time.sleep(0.2)
        return runner.Outcome(name, True, 0.2, out / f"{name}.ipynb", gpu=gpu)

    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(runner, "_terminate_children", lambda: ended.append(list(started)))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    argv = ["notebooks", "run", "--scale", "smoke", "--src", str(src), "--out",
            str(tmp_path / "out"), "--no-pages"]
    assert main(argv) == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert len(started) == 1 and ended == [started]  # one ran; the runner ended the workers
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGINT" in lines[0] and "1 notebook(s) finished" in lines[0]
    assert lines[0].endswith(shlex.join(["tinytrace", *argv, "--missing"]))
    assert "interrupted: stopping" in cap.out


def test_measured_values_map_tidy_results_to_paper_keys():
    import pandas as pd

    cov = pd.DataFrame({
        "scope": ["assignment"] * 4 + ["global"] * 4,
        "test_set": ["excluded"] * 8,
        "exclusion_pct": [10, 90, 98, 100] * 2,
        "exact_match": [0.95, 0.9, 0.6, 0.05, 0.9, 0.7, 0.3, 0.0],
    })
    m = measured("pair_coverage", cov)
    assert m == {"assignment_excluded_above_80_until": 90, "assignment_decline_from": 98,
                 "assignment_collapse_at": 100, "global_below_80_from": 90}
    cur = pd.DataFrame({"p": [0] * 5 + [5] * 5,
                        "test_set": ["depth-0-2", "depth-3", "depth-4", "depth-5", "depth-6"] * 2,
                        "exact_match": [1, .9, .5, .2, 0, 1, .99, .995, .9, .1]})
    m = measured("depth_curriculum", cur)
    assert m["depth6_p0"] == 0.9 and m["depth67_p1"] == 0.99 and m["depth8_best"] == 0.9
    sft = pd.DataFrame({"model": ["pre-trained"] * 3 + ["fine-tuned"] * 6,
                        "test_set": ["id", "deeper", "longer"] * 3,
                        "exact_match": [1, 0, .4, .9, 0, .5, .8, 0, .6],
                        "data_size": [0] * 3 + [64] * 3 + [128] * 3, "sft_epochs": [0] * 3 + [1] * 6,
                        "trainable_params": [0] * 3 + [10] * 6,
                        "best_val_loss": [None] * 3 + [0.5] * 3 + [0.7] * 3})
    m = measured("sft_lora", sft)
    assert m["finetuned_id"] == 0.9 and m["finetuned_longer"] == 0.5 and m["trainable_params"] == 10
    table = nbkit.comparison("sft_lora", sft, "smoke", "CPU")
    assert list(table["key"])[:2] == ["pretrained_id", "pretrained_deeper"]
    assert table.loc[table["key"] == "pretrained_id", "this run"].item() == 1


def test_performance_page_from_benchmark_results(tmp_path):
    """book/performance.md is generated from benchmarks/results/*.json: goals against the best
    measurement, one row per file, the loss-vs-time figure, the per-section GPU cost."""
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.json").write_text(json.dumps({
        "name": "train", "device": "H100", "date": "2026-01-01", "command": "bench", "git_commit": "abc",
        "metrics": {"tokens_per_s": 2_100_000, "mfu": 0.38, "eval_1024_seconds": None},
        "curve": [{"elapsed_s": 1.0, "loss": 3.0}, {"elapsed_s": 2.0, "loss": 1.0}],
        "em_curve": [{"step": s, "tokens": 1e6 * s, "train_seconds": 10.0 * s, "loss": 1.0,
                      "exact_match": em, "step_em_tf": 0.9} for s, em in ((1, 0.5), (2, 0.938))]}))
    (res / "b.json").write_text(json.dumps({
        "name": "eval", "metrics": {"eval_1024_seconds": 7.5, "tokens_per_s": None}}))
    page = pages.performance_page(res)
    goals = page.split("## Measurements")[0]
    assert "2.10M tokens/s, 38.0% MFU | met" in goals and "7.5 s | **not met**" in goals
    assert "not reached (best: 93.8% after 20 s of training, H100) | **not met**" in goals
    (res / "c.json").write_text(json.dumps({"name": "eval-2", "metrics": {
        "eval_1024_seconds": 4.0, "eval_1024_prepare_seconds": 55.0}}))
    goals = pages.performance_page(res).split("## Measurements")[0]
    assert "4.0 s (+55.0 s before: graph captures and compiles, once a run) | met" in goals
    (res / "c.json").unlink()
    em_table = page.split("## ID exact match against training time")[1]
    assert "| train | H100 | 2 | 2.0M | 20.0 | 93.8% | 90.0% |" in em_table
    assert "H100 minutes (training)" in page  # the cost table names the measured GPU
    assert "`a.json`" in page and "`b.json`" in page and "figures/performance-loss.png" in page
    assert pages.performance_figure(tmp_path / "fig.png", res).stat().st_size > 1000
    assert training_tokens("gpu")["base"] == pytest.approx(600_000 * 306.71)  # shipped base
    assert "No GPU results yet." in pages.performance_page(tmp_path / "none", learn_dir=tmp_path / "none")
    # the bench learn results (any device) get their own table
    learn = tmp_path / "learn"
    learn.mkdir()
    (learn / "c.json").write_text(json.dumps({
        "scale": "cpu", "device": "AMD EPYC", "eval_n": 512, "git_commit": "abcdef0123",
        "recipe": {"name": "scale", "train": {"state_loss_weight": 3}, "model": {}},
        "curve": [{"tokens": 1e6, "train_seconds": 100.0, "exact_match": 0.9},
                  {"tokens": 2e6, "train_seconds": 200.4, "exact_match": 0.953}],
        "to_90": {"seconds": 100.0}, "to_95": {"seconds": 200.4}, "to_99": None}))
    (learn / "empty.json").write_text(json.dumps({"scale": "cpu", "curve": []}))
    page = pages.performance_page(res, learn_dir=learn)
    table = page.split("## Learning efficiency on every device")[1]
    assert ("| `c.json` | `cpu` | AMD EPYC | `scale` (state_loss_weight=3) | 512 | 2.0M | 200 | 95.3% "
            "| 100 | 200 | - | `abcdef0` |") in table
    assert "empty.json" not in table


def test_tables_credit_the_paper_with_what_it_states():
    """App. C states no weight decay, betas, dropout, biases or weight tying for pre-training
    (G.1 gives the first two for fine-tuning): the paper column and the caption say so instead
    of crediting App. C."""
    table = nbkit.hyperparameters("cpu")
    for k in ("weight decay", "betas", "dropout", "linear biases", "tied input/output embeddings"):
        assert "not stated" in table.loc[k, "paper"], k
    assert "not stated" not in " ".join(map(str, table["cpu"]))
    caption = nbkit.training_caption("cpu")._repr_markdown_()
    paper_part = caption.split("**The paper** (App. C.1):")[1]
    assert "weight decay and betas are not stated for pre-training" in paper_part
    assert "weight decay 0.1" not in paper_part


def test_pipeline_outcome_shares_sum_to_100():
    """The generator's own rejections are never traced: the shares are of all attempts."""
    df = nbkit.pipeline_outcomes({"attempts": 3652, "value_range": 500, "exception": 52,
                                  "generator": 41, "unique": 3000})
    assert df.loc["accepted", "snippets"] == 3100
    assert df["% of attempts"].sum() == pytest.approx(100, abs=0.02)


def test_bars_label_the_paper_as_it_states_its_numbers():
    """The paper's 43.65 is labelled 43.65 (the tables' value), ours to 0.1; with a hue too."""
    import pandas as pd

    from tinytrace.report import plots

    t = pd.DataFrame({"test": ["id", "longer"], "paper": [1.0, 0.4365], "this run": [0.982, 0.0703]})
    fig = plots.paper_vs_ours(t, "test")
    assert [x.get_text() for x in fig.axes[0].texts] == ["100", "43.65", "98.2", "7.0"]
    plots.close(fig)
    fig = plots.paper_vs_ours(t.assign(paper=[None, None]), "test")  # no paper numbers: ours only
    assert [x.get_text() for x in fig.axes[0].texts] == ["98.2", "7.0"]
    plots.close(fig)
    fig = plots.paper_vs_ours(pd.concat([t.assign(pe="ape"), t.assign(pe="rpe")]), "test", hue="pe")
    assert all([x.get_text() for x in ax.texts] == ["100", "43.65", "98.2", "7.0"] for ax in fig.axes)
    plots.close(fig)
