"""The on-disk layout of a built dataset, reading it back, and publishing it to the Hub.

A dataset folder holds one folder per config: ``<config>/<split>-NNNNN-of-NNNNN.parquet``
shards, ``build.json`` (the build's config and summary) and, for the trainer, a uint8 token
stream per split (``<config>/tokens/<split>.bin``, examples back to back, with
``<split>.idx.npy`` holding the start offset of every example). ``README.md`` is the dataset
card (:mod:`tinytrace.data.card`), whose ``configs:`` YAML makes ``datasets.load_dataset`` work
offline exactly as it will from the Hub.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")
TOKENS_DIR = "tokens"


def load(out: str | os.PathLike, config: str, split: str = "test"):
    """``datasets.load_dataset`` on a local Hub-layout folder (no network)."""
    # imported here: ``datasets`` takes seconds to import and the GPU machines may lack it
    from datasets import load_dataset

    folder = Path(out)
    if not folder.exists():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a data folder")
    if not (folder / config).is_dir():
        have = sorted(p.name for p in folder.iterdir() if (p / "build.json").exists())
        raise FileNotFoundError(f"no config {config!r} in {folder} (have: {', '.join(have) or 'none'})")
    files = sorted((folder / config).glob("*.parquet"))
    if not files:  # else datasets names the parent folder
        raise FileNotFoundError(f"config folder {folder / config} holds no data files (*.parquet)")
    for f in files:  # datasets reads every split
        try:
            pq.ParquetFile(f)  # the footer: a truncated or corrupt file fails here, quietly
        except pa.ArrowException as e:
            raise ValueError(f"{f}: not a readable parquet file, truncated or corrupt? ({e})") from None
    if glob.escape(str(folder)) == str(folder):
        return load_dataset(str(folder), config, split=split)
    # `[`, `*` or `?` in the path: datasets would read it as a pattern and find no file, so
    # name the split's files, escaped, to the parquet builder (the same rows and features)
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split} split of config {config!r} in {folder}")
    return load_dataset("parquet", data_files={split: [glob.escape(str(f)) for f in files]}, split=split)


def read_split(out: str | os.PathLike, config: str, split: str = "test",
               columns=("code", "trace")) -> list[dict]:
    """The rows of one split as dicts, read with pyarrow (no ``datasets``: what the
    experiments, benchmarks and GPU machines without ``datasets`` use)."""
    files = sorted(Path(out, config).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split} split of config {config!r} in {out}")
    try:
        return pa.concat_tables([pq.read_table(f, columns=list(columns)) for f in files]).to_pylist()
    except pa.ArrowException as e:
        raise ValueError(f"cannot read the {split} split of {Path(out, config)}, truncated or "
                         f"corrupt? ({type(e).__name__}: {e})") from None


def token_stream(out: str | os.PathLike, config: str, split: str = "train") -> np.memmap:
    """The uint8 token stream of a split (examples back to back, each ending with EOS)."""
    path = Path(out) / config / TOKENS_DIR / f"{split}.bin"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build {config!r} with a {split} split and tokens")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: build {config!r} again")
    return np.memmap(path, dtype=np.uint8, mode="r")


def push(out: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         include_tokens: bool = False) -> str:
    """Publish a built folder as a Hub dataset (same config names, same layout)."""
    folder = Path(out)
    if not (folder / "README.md").exists():
        raise FileNotFoundError(f"{folder} has no README.md: is it a built dataset?")
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    ignore = [".*", "*/.*"] + ([] if include_tokens else [f"*/{TOKENS_DIR}/*"])
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                             ignore_patterns=ignore, commit_message="Upload TinyTracing data")
    return str(getattr(info, "commit_url", info))
