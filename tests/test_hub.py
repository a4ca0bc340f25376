"""tinytrace.hub: a trained run exported as a Hub model (card, loadable), pushed with a fake API."""
import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import torch

from tinytrace import hub
from tinytrace.experiments import base_run_dir, run_experiment
from tinytrace.model import load_checkpoint


def test_export_card_and_load(smoke_cache, tmp_path):
    run = base_run_dir("smoke", smoke_cache)
    r = subprocess.run([sys.executable, "-m", "tinytrace", "model", "export", str(run), "--out",
                        str(tmp_path / "m"), "--repo-id", "me/tiny"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m"
    card = huggingface_hub.ModelCard.load(out / "README.md")  # parses and checks the YAML
    assert card.data.to_dict() == {"library_name": "tinytrace", "license": "mit",
                                   "datasets": ["<org>/tinytracing"],
                                   "tags": ["code-execution", "program-tracing", "tinytracing"]}
    a, b = load_checkpoint(run), load_checkpoint(out)
    mc = a.config
    info = json.loads((run / "run.json").read_text())
    end = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end"
    for line in ("# me/tiny", f"| parameters | {info['params']:,} |",
                 f"| layers / heads / width | {mc.n_layer} / {mc.n_head} / {mc.n_embd} |",
                 f"| positional encoding | {mc.pe} |", f"| context | {mc.block_size} tokens |",
                 f"| training tokens (one epoch) | {info['data']['train_tokens']:,} |",
                 f"| final train / validation loss | {end['loss']:.4f} / {end['val_loss']:.4f} |",
                 'model = load_checkpoint(snapshot_download("me/tiny"))'):
        assert line in card.text.splitlines(), line
    assert json.loads((out / "run.json").read_text())["data"]["dir"] == Path(info["data"]["dir"]).name
    _no_local_paths(out, smoke_cache)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def _no_local_paths(folder: Path, cache: Path) -> None:
    for f in folder.iterdir():
        if f.suffix in (".json", ".jsonl", ".md"):
            assert str(cache) not in f.read_text() and '": "/' not in f.read_text(), f.name


def test_export_of_a_fine_tuning_run(smoke_cache, tmp_path):
    """A LoRA run (adapters merged) is exported with its own record, sft.json, and a card that
    says what it was fine-tuned from, its merged size and its fine-tuning losses."""
    run_experiment("sft_lora", "smoke", cache_dir=smoke_cache, progress=False)
    run = sorted(p for p in smoke_cache.glob("sft-*") if (p / "sft.json").exists())[0]
    out = hub.export_model(run, tmp_path / "m", "me/tuned")
    sft = json.loads((run / "sft.json").read_text())
    done = json.loads((run / "done.json").read_text())
    base = Path(sft["base_run"]).name
    lines = huggingface_hub.ModelCard.load(out / "README.md").text.splitlines()
    made = next(x for x in lines if x.startswith("| made by |"))
    assert "LoRA fine-tuning" in made and f"`{base}`" in made and f"step {done['best_step']}" in made
    for line in (f"| parameters | {sft['base_params']:,} |",
                 f"| fine-tuning examples | {sft['data']['train']['examples']:,} |",
                 f"| final train / validation loss | {done['final_train_loss']:.4f} / "
                 f"{done['final_val_loss']:.4f} |",
                 "`sft.json` and `log.jsonl` hold the full training configuration and loss curve."):
        assert line in lines, line
    assert json.loads((out / "config.json").read_text())["base_run"] == base
    assert json.loads((out / "sft.json").read_text())["base_run"] == base
    _no_local_paths(out, smoke_cache)
    assert load_checkpoint(out).num_params() == sft["base_params"]  # merged: the base model's size


def test_push_uploads_the_folder(smoke_cache, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["repo_type"]))

        def upload_folder(self, folder_path, repo_id, repo_type, **kw):
            calls.append(("upload", repo_id, repo_type, sorted(p.name for p in Path(folder_path).iterdir())))
            return "https://hub/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = hub.push_model(base_run_dir("smoke", smoke_cache), "me/tiny")
    assert url == "https://hub/commit/1"
    assert calls[0] == ("create", "me/tiny", "model")
    assert calls[1][:3] == ("upload", "me/tiny", "model")
    assert {"README.md", "model.safetensors", "config.json", "run.json", "log.jsonl"} <= set(calls[1][3])


def test_export_refuses_a_folder_without_weights(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinytrace", "model", "export", str(tmp_path), "--out",
                        str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 2 and not (tmp_path / "m").exists()
    assert r.stderr.strip() == (f"tinytrace model: error: {tmp_path / 'model.safetensors'} not found: "
                                f"is {tmp_path} a trained run?")
