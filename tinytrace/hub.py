"""Trained checkpoints as Hugging Face Hub models: ``tinytrace model export|push RUN``.

A run folder (``tinytrace train --out RUN`` or an experiment's cached ``run-*``; a fine-tuning
run, ``tinytrace sft --out`` or ``sft-*``, with the adapters merged) holds ``model.safetensors``
+ ``config.json`` (:func:`tinytrace.model.save_checkpoint`), ``run.json`` (``sft.json``) and
``log.jsonl``. The export copies the weights, and the config, record and log with this
machine's paths cut to folder names, and writes a model card (``huggingface_hub.ModelCard``:
YAML metadata from ``ModelCardData`` over a Markdown template), so
``load_checkpoint(snapshot_download("<org>/<name>"))`` works.
The command line is in :mod:`tinytrace.cli.model`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
from huggingface_hub import ModelCard, ModelCardData

CARD_FILES = ("model.safetensors", "config.json")
RECORDS = ("run.json", "sft.json")  # a pre-training run's record, a fine-tuning run's
LOCAL = ("out_dir", "base_run", "dir")  # the record fields that hold this machine's paths


def _portable(record):
    """``record`` with this machine's paths cut to their last part (a folder name still names
    the run or corpus in its cache)."""
    if isinstance(record, dict):
        return {k: Path(v).name if k in LOCAL and isinstance(v, str) else _portable(v)
                for k, v in record.items()}
    if isinstance(record, list):
        return [_portable(v) for v in record]
    return record


def _run_summary(run: Path) -> dict:
    """What the card reports (no local paths): model, how it was made (pre-training, or LoRA
    fine-tuning of a base run, merged), recipe, data size, final losses, device."""
    meta = json.loads((run / "config.json").read_text())
    sft = json.loads((run / "sft.json").read_text()) if (run / "sft.json").exists() else None
    info = sft or (json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {})
    end = {}
    if (run / "log.jsonl").exists():
        for line in (run / "log.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") in ("end", "epoch"):
                rec = {"loss": rec.get("final_train_loss"), "val_loss": rec.get("final_val_loss"),
                       **rec}  # a fine-tuning run's end event names its losses so
                end.update({k: rec[k] for k in ("loss", "val_loss", "best_val_loss", "best_step",
                                                  "tokens", "seconds", "step", "tokens_per_s")
                            if rec.get(k) is not None})
    env = info.get("env", {})
    data = info.get("data") or {}
    if sft:
        c = sft["sft"]
        made = (f"LoRA fine-tuning (rank {c['rank']}, alpha {c['alpha']:g}) of the pre-trained run "
                f"`{Path(sft['base_run']).name}`, the adapters merged into the weights "
                f"(the checkpoint of the best validation loss, step {end.get('best_step', '?')})")
        recipe = {k: c[k] for k in ("name", "epochs", "batch_size", "lr", "weight_decay") if k in c}
        size = ("fine-tuning examples", (data.get("train") or {}).get("examples"))
    else:
        made = "pre-training from scratch"
        t = meta.get("train") or info.get("train", {})
        recipe = {k: t[k] for k in ("name", "epochs", "batch_size", "lr_peak", "lr_min",
                                    "phase1_frac", "weight_decay") if k in t}
        size = ("training tokens (one epoch)", data.get("train_tokens"))
    return {"model": meta["model"], "params": info.get("params") or info.get("base_params"),
            "made": made, "recipe": recipe, "size": size, "record": RECORDS[bool(sft)],
            "device": env.get("device_name") or env.get("device"), "end": end}


# The card's Markdown, a Jinja template for ``ModelCard.from_template`` (``card_data`` is the
# YAML front matter huggingface_hub renders from the validated ``ModelCardData``).
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

A decoder-only transformer trained by the `tinytrace` companion of the TinyTracing paper to
trace tiny Python programs (how: *made by* below): given a snippet, it writes one `#STEP` block
per executed line (the snippet with the line about to run marked, then the variable values)
and a final state.

| | |
|---|---|
{% for name, value in rows -%}
| {{ name }} | {{ value }} |
{% endfor %}
## Use

```python
from huggingface_hub import snapshot_download
from tinytrace.model import load_checkpoint
from tinytrace.evaluate import evaluate

model = load_checkpoint(snapshot_download("{{ repo_id }}"))
# records = load_dataset("{{ dataset }}", "base", split="test")
# df, summary = evaluate(model, records, batch_size=64)
```

`{{ record }}` and `log.jsonl` hold the full training configuration and loss curve.
"""


def model_card(run, repo_id: str = "<org>/<name>", dataset: str = "<org>/tinytracing") -> ModelCard:
    """The model card of a trained run: ``ModelCardData`` metadata (library, license, tags,
    dataset) and a Markdown table of the model, the recipe and the final losses."""
    s = _run_summary(Path(run))
    m, e, (size_name, size) = s["model"], s["end"], s["size"]
    rows = [("made by", s["made"]),
            ("parameters", f"{s['params']:,}" if s["params"] else "?"),
            ("layers / heads / width", f"{m['n_layer']} / {m['n_head']} / {m['n_embd']}"),
            ("positional encoding", m["pe"]), ("context", f"{m['block_size']} tokens"),
            ("vocabulary", f"{m['vocab_size']} tokens (tinytrace.tokenizer)"),
            ("recipe", ", ".join(f"{k} {v}" for k, v in s["recipe"].items())),
            (size_name, f"{size:,}" if size else "?"),
            ("final train / validation loss", f"{e.get('loss', float('nan')):.4f} / "
                                              f"{e.get('val_loss', float('nan')):.4f}"),
            ("trained on", s["device"] or "?")]
    data = ModelCardData(library_name="tinytrace", license="mit", datasets=[dataset],
                         tags=["code-execution", "program-tracing", "tinytracing"])
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, repo_id=repo_id,
                                   dataset=dataset, rows=rows, record=s["record"])


def export_model(run, out, repo_id: str = "<org>/<name>", dataset: str = "<org>/tinytracing") -> Path:
    """Copy a run's weights, config and logs into ``out`` with a model card (Hub layout)."""
    run, out = Path(run), Path(out)
    for f in CARD_FILES:
        if not (run / f).is_file():
            raise FileNotFoundError(f"{run / f} not found: is {run} a trained run?")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "model.safetensors", out / "model.safetensors")
    for f in ("config.json", *RECORDS):
        if (run / f).exists():
            record = _portable(json.loads((run / f).read_text()))
            (out / f).write_text(json.dumps(record, indent=2) + "\n")
    if (run / "log.jsonl").exists():
        lines = (run / "log.jsonl").read_text().splitlines()
        (out / "log.jsonl").write_text("".join(json.dumps(_portable(json.loads(x))) + "\n"
                                               for x in lines))
    model_card(run, repo_id, dataset).save(out / "README.md")
    return out


def push_model(run, repo_id: str, token: str | None = None, private: bool = False,
               dataset: str = "<org>/tinytracing") -> str:
    """Export ``run`` with its card and upload it as a Hub model; returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(run, tmp, repo_id, dataset)
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload tinytrace model")
    return str(getattr(info, "commit_url", info))
