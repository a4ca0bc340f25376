"""Trained checkpoints as Hugging Face Hub models: ``tinytrace model export|push RUN``.

A run folder (``tinytrace train --out RUN`` or an experiment's cached ``run-*``) holds
``model.safetensors`` + ``config.json`` (:func:`tinytrace.model.save_checkpoint`), ``run.json``
and ``log.jsonl``. The export copies the weights and config, a run summary without local paths,
and writes a model card (``huggingface_hub.ModelCard``: YAML metadata from ``ModelCardData``
over a Markdown template), so ``load_checkpoint(snapshot_download("<org>/<name>"))`` works.
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


def _run_summary(run: Path) -> dict:
    """What the card reports: model, recipe, data size, final losses, device (no local paths)."""
    meta = json.loads((run / "config.json").read_text())
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    end = {}
    if (run / "log.jsonl").exists():
        for line in (run / "log.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") in ("end", "epoch"):
                end.update({k: rec[k] for k in ("loss", "val_loss", "tokens", "seconds", "step",
                                                  "tokens_per_s") if rec.get(k) is not None})
    env = info.get("env", {})
    return {"model": meta["model"], "params": info.get("params"),
            "train": meta.get("train") or info.get("train", {}),
            "train_tokens": (info.get("data") or {}).get("train_tokens"),
            "device": env.get("device_name") or env.get("device"), "end": end}


# The card's Markdown, a Jinja template for ``ModelCard.from_template`` (``card_data`` is the
# YAML front matter huggingface_hub renders from the validated ``ModelCardData``).
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

A decoder-only transformer trained from scratch by the `tinytrace` companion of the
TinyTracing paper to trace tiny Python programs: given a snippet, it writes one `#STEP` block
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

`run.json` and `log.jsonl` hold the full training configuration and loss curve.
"""


def model_card(run, repo_id: str = "<org>/<name>", dataset: str = "<org>/tinytracing") -> ModelCard:
    """The model card of a trained run: ``ModelCardData`` metadata (library, license, tags,
    dataset) and a Markdown table of the model, the recipe and the final losses."""
    s = _run_summary(Path(run))
    m, t, e = s["model"], s["train"], s["end"]
    rows = [("parameters", f"{s['params']:,}" if s["params"] else "?"),
            ("layers / heads / width", f"{m['n_layer']} / {m['n_head']} / {m['n_embd']}"),
            ("positional encoding", m["pe"]), ("context", f"{m['block_size']} tokens"),
            ("vocabulary", f"{m['vocab_size']} tokens (tinytrace.tokenizer)"),
            ("recipe", ", ".join(f"{k} {t[k]}" for k in ("name", "epochs", "batch_size", "lr_peak",
                                                        "lr_min", "phase1_frac", "weight_decay")
                                 if k in t)),
            ("training tokens (one epoch)", f"{s['train_tokens']:,}" if s["train_tokens"] else "?"),
            ("final train / validation loss", f"{e.get('loss', float('nan')):.4f} / "
                                              f"{e.get('val_loss', float('nan')):.4f}"),
            ("trained on", s["device"] or "?")]
    data = ModelCardData(library_name="tinytrace", license="mit", datasets=[dataset],
                         tags=["code-execution", "program-tracing", "tinytracing"])
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, repo_id=repo_id,
                                   dataset=dataset, rows=rows)


def export_model(run, out, repo_id: str = "<org>/<name>", dataset: str = "<org>/tinytracing") -> Path:
    """Copy a run's weights, config and logs into ``out`` with a model card (Hub layout)."""
    run, out = Path(run), Path(out)
    for f in CARD_FILES:
        if not (run / f).is_file():
            raise FileNotFoundError(f"{run / f} not found: is {run} a trained run?")
    out.mkdir(parents=True, exist_ok=True)
    for f in CARD_FILES:
        shutil.copy2(run / f, out / f)
    if (run / "log.jsonl").exists():
        shutil.copy2(run / "log.jsonl", out / "log.jsonl")
    if (run / "run.json").exists():
        info = json.loads((run / "run.json").read_text())
        info.get("data", {}).pop("dir", None)  # a local path
        (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
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
