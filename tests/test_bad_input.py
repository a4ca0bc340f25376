"""Bad arguments and bad files, command by command: one clear line on stderr naming what is
wrong, a non-zero exit, and nothing half-written that looks complete."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tinytrace.cli import main
from tinytrace.data import build_preset
from tinytrace.model import GPT, get_model_config, save_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small dataset and a run, each with a corrupt or truncated twin."""
    d = tmp_path_factory.mktemp("bad")
    build_preset("base", d / "data", 200, test_size=16, validation_size=16, workers=1,
                 progress=False, config_name="s",
                 generator_overrides=dict(min_statements=2, max_statements=3, max_depth=0))
    save_checkpoint(GPT(get_model_config("tiny", block_size=64)), d / "run")
    shutil.copytree(d / "run", d / "truncated_run")
    w = d / "truncated_run" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    shutil.copytree(d / "run", d / "other_vocab")
    meta = json.loads((d / "other_vocab" / "config.json").read_text())
    meta["vocab"] = meta["vocab"][:-1] + ["<new>"]
    (d / "other_vocab" / "config.json").write_text(json.dumps(meta))
    shutil.copytree(d / "data", d / "corrupt_data")
    for f in (d / "corrupt_data" / "s").glob("test-*.parquet"):
        f.write_bytes(f.read_bytes()[:100])
    (d / "corrupt_data" / "s" / "tokens" / "train.bin").write_bytes(b"")
    (d / "not_a_dataset").mkdir()
    (d / "empty_config" / "s").mkdir(parents=True)
    (d / "bad_run_json").mkdir()
    (d / "bad_run_json" / "run.json").write_text('{"train": {"epochs": 4')  # truncated
    (d / "bad_run_json" / "state").mkdir()
    (d / "bad_run_json" / "state" / "trainer.json").write_text("{}")
    return d


def _eval(ckpt, data, config="s"):
    return ["eval", "--checkpoint", ckpt, "--data", data, "--config", config, "--split", "test"]


def _train(data, out, *extra, config="s"):
    return ["train", "--data", data, "--config", config, "--out", out, "--model", "tiny",
            "--model-arg", "block_size=64", "--block-size", "64", "--no-progress", *extra]


# (argv with {d} for the fixture folder, what the one error line must say)
CASES = [
    (["data", "build", "--preset", "nope", "--num-snippets", "10", "--out", "{d}/x"], "invalid choice"),
    (["data", "build", "--preset", "base", "--num-snippets", "-5", "--out", "{d}/x"], "must be >= 0"),
    (["data", "build", "--preset", "base", "--num-snippets", "10", "--test-size", "20",
      "--out", "{d}/x"], "exceed --num-snippets"),
    (["data", "build", "--preset", "base", "--num-snippets", "10", "--set", "nope=1",
      "--out", "{d}/x"], "nope"),
    (["data", "push", "{d}/not_a_dataset", "--repo-id", "a/b"], "is it a built dataset"),
    (["trace", "{d}/missing.py"], "missing.py"),
    (_train("{d}/not_a_dataset", "{d}/t1"), "train.bin not found"),
    (_train("{d}/data", "{d}/t2", config="nope"), "nope"),
    (_train("{d}/corrupt_data", "{d}/t3"), "train.bin is empty"),
    (_train("{d}/data", "{d}/t4", "--batch-size", "-4"), "batch_size must be >= 1"),
    (_train("{d}/data", "{d}/t5", "--batch-size", "6", "--micro-batch-size", "4"), "micro_batch_size"),
    (_train("{d}/data", "{d}/t6", "--model", "huge"), "unknown model preset 'huge'"),
    (_train("{d}/data", "{d}/t7", "--train-preset", "nope"), "unknown train preset 'nope'"),
    (_train("{d}/data", "{d}/bad_run_json", "--resume"), "run.json does not hold"),
    (_eval("{d}/not_a_dataset", "{d}/data"), "config.json not found"),
    (_eval("{d}/truncated_run", "{d}/data"), "not a readable safetensors file"),
    (_eval("{d}/other_vocab", "{d}/data"), "field 'vocab' differs"),
    (_eval("{d}/run", "{d}/corrupt_data"), "not a readable parquet file"),
    (_eval("{d}/run", "{d}/data", config="nope"), "no config 'nope'"),
    (_eval("{d}/run", "{d}/no_such_data"), "data folder {d}/no_such_data does not exist"),
    (_eval("{d}/run", "{d}/empty_config"), "config folder {d}/empty_config/s holds no data files"),
    (["sft", "--base", "{d}/truncated_run", "--data", "{d}/data", "--config", "s", "--out",
      "{d}/s1"], "not a readable safetensors file"),
    (["sft", "--base", "{d}/run", "--data", "{d}/data", "--config", "s", "--out", "{d}/s2",
      "--preset", "nope"], "unknown sft preset 'nope'"),
    (["experiment", "nope", "--out", "{d}/e"], "invalid choice"),
    (["experiment", "base", "--scale", "huge", "--out", "{d}/e"], "invalid choice"),
    (["model", "push", "{d}/not_a_dataset", "--repo-id", "a/b"], "model.safetensors not found"),
    (["bench", "eval", "--model", "huge"], "unknown model preset 'huge'"),
    (_eval("{d}/run", "{d}/data") + ["--device", "nope"], "unknown device 'nope'"),
    (_eval("{d}/run", "{d}/data") + ["--max-len-factor", "-1"], "--max-len-factor must be > 0"),
    (_eval("{d}/run", "{d}/data") + ["--out", "{d}/run/config.json"], "is a file"),
    (["bench", "eval", "--model", "tiny", "--device", "nope"], "unknown device 'nope'"),
    (["experiment", "base", "--device", "nope", "--out", "{d}/e"], "invalid choice"),
    (_train("{d}/data", "{d}/t8", "--weight-decay", "-1"), "weight_decay and grad_clip must be >= 0"),
    (["sft", "--base", "{d}/run", "--data", "{d}/data", "--config", "s", "--out", "{d}/s4",
      "--preset", "smoke", "--alpha", "-1"], "need alpha > 0"),
    (["bench", "generate", "--seconds", "-1"], "need seconds > 0"),
    (["notebooks", "pages", "--book", "{d}/no_book"], "no book folder {d}/no_book"),
    (["notebooks", "run", "--scale", "smoke", "--device", "gpu", "--out", "{d}/nb"],
     "device must be cpu or cuda"),
    (["sft", "--base", "{d}/run", "--data", "{d}/data", "--config", "s", "--out", "{d}/run",
      "--preset", "smoke"], "not a fine-tuning run"),
]
if not torch.cuda.is_available():  # asking for a GPU where torch sees none
    CASES += [
        (_eval("{d}/run", "{d}/data") + ["--device", "cuda"], "torch sees 0 CUDA device(s)"),
        (["bench", "eval", "--model", "tiny", "--device", "cuda:1"], "torch sees 0 CUDA device(s)"),
        (["experiment", "base", "--device", "cuda", "--out", "{d}/e"], "torch sees no CUDA device"),
        (["notebooks", "run", "--scale", "smoke", "--device", "cuda", "--out", "{d}/nb"],
         "torch sees no CUDA device"),
        (["sft", "--base", "{d}/run", "--data", "{d}/data", "--config", "s", "--out", "{d}/s3",
          "--preset", "smoke", "--device", "cuda"], "torch sees no CUDA device"),
    ]


@pytest.mark.parametrize("argv, says", CASES, ids=[" ".join(c[0][:2]) + f" {i}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_clear_line(files, argv, says, capsys):
    argv = [a.replace("{d}", str(files)) for a in argv]
    says = says.replace("{d}", str(files))
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("tinytrace"), err[-2000:]
    assert says in lines[0], lines[0]
    out = files / argv[argv.index("--out") + 1] if "--out" in argv else None
    if out is not None and out.name.startswith(("t", "s", "x")):  # a new run or dataset
        assert not (out / "run.json").exists() and not (out / "done.json").exists()
        assert not list(out.glob("*/build.json")) if out.exists() else True


@pytest.mark.parametrize("argv", [
    _train("{d}/data", "{d}/run/config.json/sub"),  # under a regular file: not writable
    ["data", "build", "--preset", "base", "--num-snippets", "10", "--test-size", "2",
     "--validation-size", "2", "--out", "{d}/run/config.json/sub"],
    ["data", "build", "--preset", "base", "--num-snippets", "10", "--test-size", "2",
     "--validation-size", "2", "--out", "/proc/tinytrace-out"],
], ids=["train", "data build", "data build /proc"])
def test_non_writable_out_gives_one_clear_line(files, argv, capsys):
    argv = [a.replace("{d}", str(files)) for a in argv]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tinytrace {argv[0]}: error:"), lines
    assert "Errno" in lines[0] and argv[argv.index("--out") + 1].split("/")[-2] in lines[0]


def _half_then_full_disk(write):
    """``write(data, path)`` writes half of ``data`` to ``path``, then the disk is full."""
    def fail(data, path):
        write(data[: len(data) // 2], path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return fail


def test_full_disk_in_train_leaves_no_model(files, tmp_path, monkeypatch, capsys):
    """The disk fills while the weights are written: one line, exit 2, and no
    model.safetensors that looks complete (the resumable state saved before it is whole)."""
    import safetensors.torch

    import tinytrace.model

    monkeypatch.setattr(tinytrace.model, "save_file", lambda t, path, metadata=None:
                        _half_then_full_disk(lambda b, p: Path(p).write_bytes(b))(
                            safetensors.torch.save(t, metadata=metadata), path))
    out = tmp_path / "run"
    assert main(_train(str(files / "data"), str(out), "--max-steps", "2")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert not (out / "model.safetensors").exists() and not (out / "done.json").exists()
    assert (out / "state" / "trainer.json").exists()  # the state of step 2 was saved whole


def test_full_disk_in_data_build_leaves_no_dataset(tmp_path, monkeypatch, capsys):
    """The disk fills while build.json is written: one line, exit 2, and the config stays in
    its ``.<name>.incomplete`` folder (no ``<name>`` folder that looks built)."""
    write_text = Path.write_text

    def full(self, text, *a, **k):
        if self.name == "build.json":
            _half_then_full_disk(lambda t, p: write_text(p, t, *a, **k))(text, self)
        return write_text(self, text, *a, **k)
    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "ds"
    assert main(["data", "build", "--preset", "base", "--num-snippets", "40", "--test-size", "8",
                 "--validation-size", "4", "--workers", "1", "--quiet", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert not (out / "base").exists() and (out / ".base.incomplete").exists()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("argv, target", [
    (["data", "push", "{d}/data", "--repo-id", "a/b"], "tinytrace.data.push"),
    (["model", "push", "{d}/run", "--repo-id", "a/b"], "tinytrace.cli.model.push_model"),
], ids=["data push", "model push"])
def test_no_network_gives_one_clear_line(files, argv, target, monkeypatch, capsys):
    """The Hub's client raises its HTTP library's errors (neither OSError nor ValueError):
    httpx2's from huggingface_hub 2, httpx's before."""
    try:
        import httpx2 as http
    except ImportError:
        http = pytest.importorskip("httpx")

    def offline(*args, **kwargs):
        raise http.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(target, offline)
    assert main([a.replace("{d}", str(files)) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"tinytrace {argv[0]}: error: ConnectError: [Errno -2] Name or service not known"]


@pytest.mark.parametrize("error, says", [
    (PermissionError("403 Forbidden: no write access to a/b"), "403 Forbidden"),
    (RuntimeError("upload refused"), "RuntimeError: upload refused"),
], ids=["OSError", "RuntimeError"])
def test_push_errors_end_alike(files, error, says, monkeypatch, capsys):
    """Whatever the Hub upload raises ends in one line and exit 2 (it was 1 for some)."""
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr("tinytrace.data.push", failing)
    assert main(["data", "push", str(files / "data"), "--repo-id", "a/b"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinytrace data: error: ") and says in lines[0]
