import os

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
