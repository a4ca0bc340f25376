import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


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
    try:  # tiny models gain nothing from threads; oversubscribed cores lose a lot
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """One experiment cache for the whole session: the smoke-scale base model is trained once
    and reused by the experiment tests and the notebook runs."""
    return tmp_path_factory.mktemp("smoke-cache")


@pytest.fixture(scope="session")
def smoke_batch(tmp_path_factory, smoke_cache):
    """The book at smoke scale (`tinytrace notebooks run`) on the session's cache, its records
    store in the default place: the runs the experiment tests trained are reused, so this
    checks the notebooks themselves (training is checked by those tests).
    Returns ``(out, completed process, seconds)``."""
    out = tmp_path_factory.mktemp("sections")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tinytrace", "notebooks", "run", "--scale", "smoke", "--out",
         str(out), "--cache-dir", str(smoke_cache), "--jobs", "2"],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    return out, proc, time.perf_counter() - t0


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
