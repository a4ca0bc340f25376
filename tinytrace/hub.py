"""Trained checkpoints as Hugging Face Hub models: ``tinytrace model export|push RUN``.

A run folder (``tinytrace train --out RUN`` or an experiment's cached ``run-*``) holds
``model.safetensors`` + ``config.json`` (:func:`tinytrace.model.save_checkpoint`), ``run.json``
and ``log.jsonl``. The export copies the weights and config, a run summary without local paths,
and writes a model card, so ``load_checkpoint(snapshot_download("<org>/<name>"))`` works.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

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


def model_card(run, repo_id: str = "<org>/<name>", dataset: str = "<org>/tinytracing") -> str:
    """A model card (YAML front matter + Markdown) for a trained run."""
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
    table = "\n".join(["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    return f"""---
library_name: tinytrace
license: mit
tags:
- code-execution
- program-tracing
- tinytracing
datasets:
- {dataset}
---

# {repo_id}

A decoder-only transformer trained from scratch by the `tinytrace` companion of the
TinyTracing paper to trace tiny Python programs: given a snippet, it writes one `#STEP` block
per executed line (the snippet with the line about to run marked, then the variable values)
and a final state.

{table}

## Use

```python
from huggingface_hub import snapshot_download
from tinytrace.model import load_checkpoint
from tinytrace.evaluate import evaluate

model = load_checkpoint(snapshot_download("{repo_id}"))
# records = load_dataset("{dataset}", "base", split="test")
# df, summary = evaluate(model, records, batch_size=64)
```

`run.json` and `log.jsonl` hold the full training configuration and loss curve.
"""


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
    (out / "README.md").write_text(model_card(run, repo_id, dataset))
    return out


def push_model(run, repo_id: str, token: str | None = None, private: bool = False,
               dataset: str = "<org>/tinytracing") -> str:
    """Export ``run`` with its card and upload it as a Hub model; returns the commit URL."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(run, tmp, repo_id, dataset)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload tinytrace model")
    return str(getattr(info, "commit_url", info))


def add_cli(sub) -> None:
    p = sub.add_parser("model", help="export or push a trained run as a Hub model")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="{export,push}")
    e = msub.add_parser("export", help="weights, config, logs and a model card into a folder")
    e.add_argument("run", help="a run folder (model.safetensors + config.json)")
    e.add_argument("--out", required=True)
    e.add_argument("--repo-id", default="<org>/<name>", help="the name the card uses")
    e.set_defaults(func=_export)
    u = msub.add_parser("push", help="upload to the Hub (needs a token)")
    u.add_argument("run")
    u.add_argument("--repo-id", required=True)
    u.add_argument("--dataset", default="<org>/tinytracing", help="the dataset the card links")
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=_push)


def _export(args) -> int:
    out = export_model(args.run, args.out, args.repo_id)
    print(f"wrote {out}")
    return 0


def _push(args) -> int:
    print(push_model(args.run, args.repo_id, private=args.private, dataset=args.dataset))
    return 0
