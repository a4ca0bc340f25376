import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    """datasets/huggingface_hub caches go to a temp folder; nothing touches the network."""
    home = tmp_path_factory.getbasetemp() / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    yield


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:  # tiny models gain nothing from threads; oversubscribed cores lose a lot
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _shared(tmp_path_factory, name: str) -> Path:
    """A folder of this test session: under pytest-xdist (``-n``) every worker's same folder,
    so the session fixtures below are made once (the filelock pattern of xdist's docs)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    return root / name


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """One experiment cache for the whole session: the smoke-scale base model is trained once
    and reused by the experiment tests and the notebook runs (the cache's own locks make
    workers that ask for one artifact at once build it once)."""
    path = _shared(tmp_path_factory, "smoke-cache")
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smoke_batch(tmp_path_factory, smoke_cache):
    """The book at smoke scale (`tinytrace notebooks run`) on the session's cache, its records
    store in the default place: it reuses the runs the experiment tests have trained by then,
    so it mostly checks the notebooks themselves (training is checked by those tests). Run
    once per session, a failure included; the tests only read it.
    Returns ``(out, completed process, seconds)``."""
    out = _shared(tmp_path_factory, "sections")
    done = out.with_name("sections.json")
    with FileLock(f"{out}.lock"):
        if not done.exists():
            t0 = time.perf_counter()
            args = [sys.executable, "-m", "tinytrace", "notebooks", "run", "--scale", "smoke",
                    "--out", str(out), "--cache-dir", str(smoke_cache), "--jobs", "2"]
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=900,
                                      cwd=Path(__file__).resolve().parents[1])
            except subprocess.TimeoutExpired as e:  # its output is bytes, whatever `text`
                said = e.stdout or b""
                said = said.decode(errors="replace") if isinstance(said, bytes) else said
                proc = subprocess.CompletedProcess(args, -1, said, str(e))
            done.write_text(json.dumps({"args": args, "returncode": proc.returncode,
                                        "stdout": proc.stdout, "stderr": proc.stderr,
                                        "seconds": time.perf_counter() - t0}))
    r = json.loads(done.read_text())
    proc = subprocess.CompletedProcess(r["args"], r["returncode"], r["stdout"], r["stderr"])
    return out, proc, r["seconds"]


def _signal_when(cmd, ready, signum, env=None, deadline_s=120):
    """Start ``cmd``, send ``signum`` once ``ready()`` is true (polled, at most ``deadline_s``),
    wait for the process (at most 60 s more; killed after that) and return
    ``(returncode, stdout, stderr)``: a regression fails the test instead of hanging it."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t_end = time.time() + deadline_s
        while time.time() < t_end and p.poll() is None:
            if ready():
                p.send_signal(signum)
                break
            time.sleep(0.01)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, out, err


@pytest.fixture
def signal_when():
    """:func:`_signal_when`: run a command and interrupt it once a condition holds."""
    return _signal_when
