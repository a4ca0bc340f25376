"""Greedy exact-match evaluation (paper Sec. 3.3, 2.2, App. C.1, C.5): :func:`evaluate`.

The prompt is the snippet and the first ``#STEP`` token; the model continues greedily
(:mod:`.decode`, through the sliding window) until the end-of-example token or a length cap,
and each trace is scored by :mod:`.metrics`: exact match, where the first wrong token is, the
final state, and the "early" metrics computed with the true context (teacher forcing).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from tinytrace.lang import tokenizer as tk
from tinytrace.provenance import hardware, versions

from .decode import (
    StaticDecoder,
    greedy_generate,
    model_device,
    teacher_forced,
)
from .metrics import exact_match, final_state, first_wrong, scores, tf_metrics


# --- records -----------------------------------------------------------------------------------
@dataclass
class Record:
    """One evaluation example: the prompt and the target, as text and as token ids."""

    prompt: str
    target: str  # everything after the prompt, ending with the EOS text "\n\n"
    prompt_ids: list[int]
    target_ids: list[int]


def make_records(data, limit: int | None = None) -> list[Record]:
    """Records from a ``datasets.Dataset``, a pandas DataFrame or dicts with ``code``/``trace``
    (a trace without its trailing "\\n\\n", as :func:`tinytrace.data.load` returns)."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas
        rows = data.to_dict("records")
    else:
        rows = data
    n = len(rows) if limit is None else min(limit, len(rows))
    out = []
    for i in range(n):
        row = rows[i]
        code, trace = row["code"], row["trace"]
        prompt = code + tk.STEP
        if not trace.startswith(prompt):
            raise ValueError(f"example {i}: trace does not start with its code and '#STEP'")
        ids = tk.encode(trace)
        p_ids = tk.encode(code) + [tk.STEP_ID]
        if ids[: len(p_ids)] != p_ids:
            raise ValueError(f"example {i}: prompt tokens differ from the trace's first tokens")
        out.append(Record(prompt, trace[len(prompt):] + tk.EOS, p_ids, ids[len(p_ids):] + [tk.EOS_ID]))
    return out




def resolve_device(name: str | None) -> torch.device:
    """``name`` (any torch device: "cpu", "cuda", "cuda:1", ...), or CUDA when available, else
    the CPU. A name torch does not know, or a GPU that is not visible, is a ValueError."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:  # "Expected one of cpu, cuda, ... device type at start of device string"
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}, but torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return device


# --- evaluation --------------------------------------------------------------------------------
def evaluate(model, data, batch_size: int = 32, limit: int | None = None, device=None, *,
             use_cache: bool = True, max_len_factor: float = 2.0, teacher_forcing: bool = True,
             amp: bool = True, compile: bool = False, progress: bool = False, sync_every: int = 16,
             decode: str = "auto", eos_prefix: bool = False):
    """Greedy exact match of ``model`` on ``data`` (a Dataset, DataFrame, dicts or Records).

    A row may generate up to ``ceil(max_len_factor * len(target)) + 16`` tokens: a longer output
    is wrong anyway, and the margin leaves room to read a late final state. ``eos_prefix``
    starts every prompt with the end-of-example token, as every example in the training stream
    is preceded by one (off by default; the `cpu` scale turns it on).
    ``decode``: ``"static"`` (:class:`.decode.StaticDecoder`, a CUDA graph per token),
    ``"dynamic"`` (:func:`greedy_generate`, drops finished rows: best on CPUs) or ``"auto"``
    (static on CUDA with the KV cache, else dynamic).
    Returns ``(records DataFrame, summary dict)``; the summary has ``exact_match``, ``n``,
    ``step_em_tf``, ``final_state_match``, ``state_token_acc`` and throughput."""
    if isinstance(data, list) and data and isinstance(data[0], Record):
        records = data[:limit]
    else:
        records = make_records(data, limit)
    if not records:
        raise ValueError("no examples to evaluate")
    if not max_len_factor > 0:
        raise ValueError(f"max_len_factor must be > 0, got {max_len_factor}")
    if eos_prefix:
        records = [replace(r, prompt_ids=[tk.EOS_ID] + r.prompt_ids) for r in records]
    if device is not None:
        model = model.to(device)
    model.eval()
    dev = model_device(model)
    fwd = torch.compile(model, dynamic=True) if compile else model
    if decode not in ("auto", "static", "dynamic"):
        raise ValueError(f"decode must be auto, static or dynamic, got {decode!r}")
    static = use_cache and (decode == "static" or (decode == "auto" and dev.type == "cuda"))
    order = sorted(range(len(records)), key=lambda i: -(len(records[i].prompt_ids) + len(records[i].target_ids)))
    caps_all = [math.ceil(max_len_factor * len(r.target_ids)) + 16 for r in records]
    # one static decoder for every batch: its buffers and CUDA graphs are made once
    decoder = StaticDecoder(model, fwd=fwd, amp=amp, batch=min(batch_size, len(records)),
                            capacity=max(caps_all)) if static else None
    preds: list[list[int] | None] = [None] * len(records)
    stats = {"generated_tokens": 0, "restarts": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), desc="eval", disable=not progress, file=sys.stderr)
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        prompts = [records[j].prompt_ids for j in idx]
        caps = [caps_all[j] for j in idx]
        if static:
            outs, st = decoder(prompts, caps, sync_every=max(sync_every, 32))
        else:
            outs, st = greedy_generate(model, prompts, caps, use_cache=use_cache,
                                       sync_every=sync_every, amp=amp, fwd=fwd)
        for j, o in zip(idx, outs):
            preds[j] = o
        for k in stats:
            stats[k] += st[k]
        bar.update(len(idx))
    bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    tf = teacher_forced(model, records, batch_size, amp=amp, fwd=fwd) if teacher_forcing else None
    t_tf = time.perf_counter() - t1
    rows = []
    for i, (r, p) in enumerate(zip(records, preds)):
        text = tk.decode(p)
        fw = first_wrong(p, r.target_ids)
        fs_pred, fs_true = final_state(p), final_state(r.target_ids)
        row = {
            "index": i, "prompt": r.prompt, "target": r.target, "prediction": text,
            "correct": exact_match(p, r.target),
            "first_wrong_token": fw[0] if fw else None, "first_wrong_step": fw[1] if fw else None,
            "first_wrong_line": fw[2] if fw else None,
            "final_state_match": fs_pred is not None and fs_pred == fs_true,
            "finished": bool(p) and p[-1] == tk.EOS_ID,
            "n_target_tokens": len(r.target_ids), "n_generated": len(p),
        }
        if tf is not None:
            m = tf_metrics(r.target_ids, tf[i])
            row.update(m)
            row["step_em_tf"] = m["blocks_ok"] / m["blocks"]
            row["state_token_acc"] = m["state_ok"] / m["state_tokens"] if m["state_tokens"] else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    n = len(df)
    summary = {
        **scores(df),
        "generated_tokens": stats["generated_tokens"],
        "window_restarts": stats["restarts"],
        "seconds_generate": round(t_gen, 3),
        "seconds_teacher_forced": round(t_tf, 3),
        "tokens_per_s": round(stats["generated_tokens"] / t_gen, 1),
        "traces_per_s": round(n / t_gen, 3),
        "use_cache": use_cache,
        "decode": "static" if static else "dynamic",
        "batch_size": batch_size,
        "max_len_factor": max_len_factor,
        "eos_prefix": eos_prefix,
        "device": str(dev),
    }
    return df, summary




def save_results(df, summary: dict, out, checkpoint) -> Path:
    """``out/records.jsonl`` (one row per example) and ``out/summary.json`` (the summary with the
    checkpoint's model config, library versions and hardware)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_json(out / "records.jsonl", orient="records", lines=True)
    meta = json.loads((Path(checkpoint) / "config.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "model": meta["model"], "versions": versions(),
                                                  "hardware": hardware()}, indent=2) + "\n")
    return out
