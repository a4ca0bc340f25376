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
