import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub.errors import OfflineModeIsEnabled

from tinytrace.data import (
    BuildConfig,
    Pipeline,
    build,
    build_preset,
    load,
    push,
    token_stream,
)
from tinytrace.lang import tokenizer as tk
from tinytrace.lang.config import get_preset, sample_pairs
from tinytrace.lang.generator import DefaultRules
from tinytrace.lang.program import cooccurring_pairs, parse
from tinytrace.lang.tracer import format_example, run, run_settrace


def _table(folder: Path, config: str, split: str):
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    summary = build_preset("base", out, 3000, seed=3, test_size=300, validation_size=200,
                           workers=1, progress=False, chunk_size=256, shard_rows=1000)
    return out, summary


def test_hub_layout_and_card(built):
    out, summary = built
    names = sorted(p.name for p in (out / "base").glob("*.parquet"))
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00003.parquet",
                     "train-00001-of-00003.parquet", "train-00002-of-00003.parquet",
                     "validation-00000-of-00001.parquet"]
    card = (out / "README.md").read_text()
    assert "config_name: base" in card and "path: base/train-*" in card
    assert "SHA-256" in card and "seed 3" in card
    assert summary["splits"] == {"train": 2500, "validation": 200, "test": 300}
    assert json.loads((out / "base" / "build.json").read_text())["build"]["seed"] == 3


def test_load_dataset_offline(built):
    out, _ = built
    ds = load(out, "base", "test")
    assert len(ds) == 300
    cols = set(ds.column_names)
    assert {"code", "trace", "n_statements", "max_depth", "n_steps", "n_tokens",
            "operand_pairs", "executed_operand_pairs", "sha256"} <= cols
    from datasets import load_dataset

    assert len(load_dataset(str(out), "base", split="train")) == 2500
    with pytest.raises(FileNotFoundError, match="no config 'longer'"):
        load(out, "longer")


def test_card_states_the_literal_bound_a_full_build_keeps(tmp_path):
    """`full` draws literals up to 99 but a `while` bound up to 99 + its span (5): the card
    says both, and no snippet has a literal beyond what it says."""
    build_preset("full", tmp_path, 400, test_size=50, validation_size=50, workers=1,
                 progress=False)
    card = (tmp_path / "README.md").read_text()
    assert "literals up to 99 in absolute value (a `while` bound up to 104), values in [-99, 99]" in card
    literals = [x for r in _table(tmp_path, "full", "train").to_pylist()
                for ln in parse(r["code"]) for x in (ln.a, ln.b) if isinstance(x, int)]
    assert max(map(abs, literals)) <= 104 and max(literals) > 9


def test_load_from_a_path_with_glob_characters(built, tmp_path):
    """`[`, `*`, `?` in a folder name (e.g. `/tmp/l2-2-adamw-20000-['3']/data`) are not
    patterns: the same rows and features as from a plain path."""
    out, _ = built
    odd = tmp_path / "run[1]*?" / "data"
    shutil.copytree(out, odd)
    for split, n in (("test", 300), ("train", 2500)):
        plain, other = load(out, "base", split), load(odd, "base", split)
        assert len(other) == n and other.features == plain.features
        assert other["sha256"] == plain["sha256"]
    with pytest.raises(FileNotFoundError, match="no config 'longer'"):
        load(odd, "longer")


def test_every_row_retraces_byte_for_byte(built):
    out, _ = built
    t = _table(out, "base", "test").to_pylist()
    for row in t:
        lines = parse(row["code"])
        assert row["trace"] == format_example(lines, run_settrace(row["code"]))
        assert row["n_tokens"] == len(tk.encode(row["trace"] + "\n\n"))
        assert 5 <= row["n_statements"] <= 10 and row["max_depth"] <= 2


def test_no_snippet_in_two_splits(built):
    out, _ = built
    hashes = {s: set(_table(out, "base", s)["sha256"].to_pylist()) for s in ("train", "validation", "test")}
    assert sum(len(h) for h in hashes.values()) == 3000  # unique within splits too
    assert not hashes["train"] & hashes["test"] and not hashes["train"] & hashes["validation"]
    assert not hashes["validation"] & hashes["test"]


def test_token_stream_matches_traces(built):
    out, _ = built
    stream = token_stream(out, "base", "validation")
    idx = np.load(out / "base" / "tokens" / "validation.idx.npy")
    traces = _table(out, "base", "validation")["trace"].to_pylist()
    assert len(idx) == len(traces) == 200
    ends = list(idx[1:]) + [len(stream)]
    for s, e, text in zip(idx, ends, traces):
        assert tk.decode(stream[s:e].tolist()) == text + "\n\n"
    assert stream[-1] == tk.EOS_ID


_BUILD = ('build_preset("base", sys.argv[1], 600, test_size=50, validation_size=50, workers=2, '
          'progress=False, chunk_size=128); print("built")')
# (script body after its imports, whether spawned workers would run the build again)
_SCRIPTS = {
    "top level": (f"{_BUILD}\n", True),
    "a function called at top level": (f"def main():\n    {_BUILD}\n\nmain()\n", True),
    "guarded": (f'if __name__ == "__main__":\n    {_BUILD}\n', False),
    "guarded, reversed, with `and`, in a try": (
        f'try:\n    if "__main__" == __name__ and len(sys.argv) > 1:\n        {_BUILD}\n'
        f'except KeyboardInterrupt:\n    pass\n', False),
}


@pytest.mark.parametrize("case", _SCRIPTS)
def test_a_script_without_a_main_guard_builds_instead_of_hanging(tmp_path, case):
    """Spawned workers import the main script again: one that builds at its top level would
    have each worker start the same build (through the experiment cache: wait for its
    parent's lock), forever. Such a build runs in the one process, with a warning; a guarded
    script gets its workers."""
    body, reruns = _SCRIPTS[case]
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nfrom tinytrace.data import build_preset\n\n{body}")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "built\n", proc.stderr
    assert ("in this process only" in proc.stderr) is reruns, proc.stderr
    assert (tmp_path / "out" / "base" / "build.json").exists()


def test_a_starting_worker_refuses_to_build(tmp_path, monkeypatch):
    """What the check above cannot see (a build from a thread the script starts): a process
    still importing the main script for its parent refuses to build, before touching the
    parent's build, with the cause, instead of waiting forever."""
    import multiprocessing as mp

    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    (tmp_path / ".base.incomplete").mkdir()  # the parent's build in progress
    with pytest.raises(RuntimeError, match="if __name__ == "):
        build_preset("base", tmp_path, 100, test_size=10, validation_size=10, workers=1,
                     progress=False)
    assert (tmp_path / ".base.incomplete").exists()


def test_seed_determinism_with_1_and_2_workers(tmp_path):
    a = build_preset("base", tmp_path / "a", 1500, seed=9, test_size=100, validation_size=100,
                     workers=1, progress=False, chunk_size=128)
    b = build_preset("base", tmp_path / "b", 1500, seed=9, test_size=100, validation_size=100,
                     workers=2, progress=False, chunk_size=128)
    assert a["stats"] == b["stats"]
    for split in ("train", "validation", "test"):
        assert _table(tmp_path / "a", "base", split).equals(_table(tmp_path / "b", "base", split))
    assert (tmp_path / "a/base/tokens/train.bin").read_bytes() == (tmp_path / "b/base/tokens/train.bin").read_bytes()


def test_determinism_filter(tmp_path):
    # a tiny window: only short traces may enter test/validation; train keeps the others
    s = build_preset("base", tmp_path, 600, seed=1, test_size=50, validation_size=50,
                     workers=1, progress=False, context=120)
    for split in ("test", "validation"):
        assert max(_table(tmp_path, "base", split)["max_step_pair_tokens"].to_pylist()) <= 120
    assert max(_table(tmp_path, "base", "train")["max_step_pair_tokens"].to_pylist()) > 120
    s2 = build_preset("base", tmp_path / "strict", 300, seed=1, test_size=50, validation_size=50,
                      workers=1, progress=False, context=120, deterministic_train=True)
    assert max(_table(tmp_path / "strict", "base", "train")["max_step_pair_tokens"].to_pylist()) <= 120
    assert s2["stats"]["nondeterministic"] > 0 and s["stats"]["nondeterministic"] == 0


def test_configs_accumulate_in_one_folder(tmp_path):
    build_preset("base", tmp_path, 120, test_size=60, validation_size=60, workers=1, progress=False)
    build_preset("longer", tmp_path, 60, test_size=60, validation_size=0, workers=1, progress=False)
    card = (tmp_path / "README.md").read_text()
    assert "config_name: base" in card and "config_name: longer" in card
    assert len(load(tmp_path, "longer", "test")) == 60
    assert "split: train" not in card  # no empty split is declared


def test_pair_datasets(tmp_path):
    pairs = sample_pairs(50, seed=0)
    train_cfg = get_preset("base", forbidden_pairs=pairs, exclusion_scope="global")
    build(BuildConfig(train_cfg, num_snippets=400, test_size=100, validation_size=0,
                      config_name="global-50"), tmp_path, workers=1, progress=False)
    test_cfg = get_preset("base", forbidden_pairs=pairs, require_forbidden_pair=True)
    build(BuildConfig(test_cfg, num_snippets=100, test_size=100, validation_size=0,
                      config_name="excluded-50"), tmp_path, workers=1, progress=False)
    fs = set(pairs)
    for row in _table(tmp_path, "global-50", "train").to_pylist():
        assert not fs & set(cooccurring_pairs(parse(row["code"])))
    for row in _table(tmp_path, "excluded-50", "test").to_pylist():
        assert fs & set(row["executed_operand_pairs"])


def test_interrupted_build_never_looks_complete(tmp_path, monkeypatch):
    data = importlib.import_module("tinytrace.data.build")  # the module, not the function

    calls = {"n": 0}
    real = data._make_chunk

    def flaky(args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(data, "_make_chunk", flaky)
    cfg = BuildConfig(get_preset("base"), num_snippets=800, test_size=100, validation_size=100,
                      chunk_size=128)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, tmp_path, workers=1, progress=False)
    assert not (tmp_path / "base").exists() and (tmp_path / ".base.incomplete").exists()
    made = []
    monkeypatch.setattr(data, "_make_chunk", lambda args: (made.append(args[3]), real(args))[1])
    build(cfg, tmp_path, workers=1, progress=False)  # rerunning finishes it
    assert (tmp_path / "base" / "build.json").exists() and not (tmp_path / ".base.incomplete").exists()
    assert made[0] == 2  # chunks 0 and 1 came from the interrupted build
    assert not (tmp_path / ".base.chunks").exists()
    # byte-identical to an uninterrupted build
    build(cfg, tmp_path / "whole", workers=1, progress=False)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*"))  # noqa: E731
                       if p.is_file() and p.name != "timing.json"}
    assert files(tmp_path / "base") == files(tmp_path / "whole" / "base")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_process_group_stops_a_pooled_build(tmp_path, signum, code):
    """Ctrl-C (SIGINT to the whole process group) or a group SIGTERM during a build with a
    worker pool: the build stops within seconds with one line and exit 130 / 143, no traceback,
    no process left behind, and no config that looks complete."""
    cmd = [sys.executable, "-m", "tinytrace", "data", "build", "--preset", "base",
           "--num-snippets", "3000000", "--workers", "2", "--out", str(tmp_path), "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".base.chunks/*.arrow")) and time.time() < deadline:
            time.sleep(0.1)  # until the workers have delivered a chunk
        assert p.poll() is None, p.communicate()
        children = _children(p.pid)  # the workers and the resource tracker
        assert len(children) >= 2
        os.killpg(p.pid, signum)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == code, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], err[-3000:]
    deadline = time.time() + 15
    while any(Path(f"/proc/{c}").exists() for c in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "processes left behind"
    assert not (tmp_path / "base").exists()
    assert list((tmp_path / ".base.chunks").glob("*.arrow"))  # kept for the rerun


def _sigint_disposition(_):
    return signal.getsignal(signal.SIGINT)


def test_pool_workers_start_with_sigint_ignored():
    """A group Ctrl-C that reaches a build worker still importing (before it leaves the job's
    process group) finds SIGINT ignored there, not a KeyboardInterrupt with its traceback;
    the main process keeps its own handler."""
    from tinytrace.data.build import _worker_pool

    before = signal.getsignal(signal.SIGINT)
    pool = _worker_pool(2)
    try:
        assert signal.getsignal(signal.SIGINT) is before
        assert pool.map(_sigint_disposition, range(2)) == [signal.SIG_IGN] * 2
    finally:
        pool.terminate()
        pool.join()


PIPELINE_CONFIGS = {
    "base": get_preset("base"),
    "deeper": get_preset("deeper"),
    "pairs-global": get_preset("base", forbidden_pairs=sample_pairs(60, seed=4), exclusion_scope="global"),
    "requires-pair": get_preset("base", forbidden_pairs=sample_pairs(20, seed=5),
                                require_forbidden_pair=True),
    # the operators and comparisons the paper's experiments leave out (zero divisors rejected)
    "operators": get_preset("base", arith_ops=("*", "//", "%"), comparisons=("<=", ">=", "==", "!="),
                            value_range=(-999, 999), one_op_per_snippet=False),
}


@pytest.mark.parametrize("name", list(PIPELINE_CONFIGS))
def test_pipeline_paths_agree(name):
    """The default rules' fast path (run while written, examples made in one pass per chunk)
    gives the records and rejection counts of the context-stack generator + general tracer,
    and ``records`` gives what repeated ``sample`` calls give."""
    cfg = PIPELINE_CONFIGS[name]
    fast, ref = Pipeline(cfg), Pipeline(cfg, rules=DefaultRules(cfg))
    assert fast.fast is not None and ref.fast is None
    s1, s2, s3 = Counter(), Counter(), Counter()
    a = fast.records(random.Random(7), 300, s1)
    b = ref.records(random.Random(7), 300, s2)
    assert a == b and s1 == s2
    rng, one = random.Random(7), []
    while len(one) < 300:
        r = fast.sample(rng, s3)
        if r is not None:
            one.append(r)
    assert s3 == s1 and one == [{k: v[i] for k, v in a.items()} for i in range(300)]
    assert s1["attempts"] > 300 and s1["value_range"] + s1["exception"] > 0
    for r in one[:50]:
        lines = parse(r["code"])
        assert r["trace"] == format_example(lines, run(lines, cfg.value_range))
        assert r["tokens"] == bytes(tk.encode(r["trace"] + "\n\n"))


def test_bad_build_arguments():
    with pytest.raises(ValueError, match="exceed"):
        BuildConfig(num_snippets=10, test_size=8, validation_size=8)
    with pytest.raises(ValueError, match=">= 0"):
        BuildConfig(num_snippets=-1)


@pytest.mark.parametrize("overrides, says", [
    # a handful of snippets exist (one statement, one variable, the literal 0): every chunk
    # after the first is duplicates only
    (dict(variables="a", max_literal=0, min_statements=1, max_statements=1, max_depth=0),
     "gave no new snippet"),
    # no variable operand, so no executed `x = u op v` uses the required pair: nothing accepted
    (dict(forbidden_pairs=("ab",), require_forbidden_pair=True, p_operand_variable=0),
     "accepted none of 1,000 attempts"),
], ids=["too few snippets", "nothing accepted"])
def test_a_build_that_cannot_finish_stops_and_leaves_nothing(tmp_path, monkeypatch, overrides, says):
    """Without a limit both builds ran forever, the first filling the disk with chunks of
    duplicates (an alarm fails the test instead of hanging it)."""
    import tinytrace.data.pipeline as P

    def hung(signum, frame):
        raise TimeoutError("the build did not stop")

    monkeypatch.setattr(P, "GIVE_UP", 1000, raising=False)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(ValueError, match=says):
            build_preset("base", tmp_path, 100, test_size=10, validation_size=10, workers=1,
                         progress=False, generator_overrides=overrides, chunk_size=64)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert list(tmp_path.iterdir()) == []


def test_push_is_real_but_needs_the_network(built, monkeypatch):
    """``push`` goes through huggingface_hub's HTTP client: in offline mode it refuses with its
    own error (HF_HUB_OFFLINE is read when huggingface_hub is imported, so set it here)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        push(built[0], "someone/tinytracing", token="hf_fake")
    with pytest.raises(FileNotFoundError, match="README"):
        push(built[0] / "base", "someone/x", token="t")
