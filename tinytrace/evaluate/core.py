"""Greedy exact-match evaluation (paper Sec. 3.3, 2.2, App. C.1, C.5).

The prompt is the snippet and the first ``#STEP`` token; the model continues greedily until the
end-of-example token (or a length cap) and a trace counts as correct only if the generated text
equals the ground truth character for character, markers included.

Traces are longer than the 512-token context, so decoding uses a deterministic sliding window
(C.5): when the next token would not fit, the window restarts at the ``#STEP`` token opening the
previous step block (the data's determinism filter guarantees that two consecutive blocks fit)
and is re-encoded; with learned absolute positions the positions restart at 0, as in training's
random windows. Decoding is batched (rows sorted by length, right padding, a KV cache, finished
rows dropped) and equals one-at-a-time greedy decoding without the cache (tested).

Besides exact match, "early" metrics computed with the true context (teacher forcing through the
same windows the decoder would have used): per-step exact match (a step block is right when the
argmax of each of its tokens is), and token accuracy on the state values (after ``$``); plus the
match of the generated final state (``@^$...``).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tinytrace.lang import tokenizer as tk
from tinytrace.model import GPT, get_model_config, load_checkpoint, unwrap
from tinytrace.provenance import hardware, versions

AT, CARET, DOLLAR = tk.STOI["@"], tk.STOI["^"], tk.STOI["$"]
LINE_END = (tk.NEWLINE_ID, tk.STEP_ID, tk.EOS_ID)


# --- the sliding window ------------------------------------------------------------------------
def restart_offset(window: list[int], block_size: int) -> int:
    """Where a full window restarts: at the ``#STEP`` opening the previous step block (the
    second-to-last ``#STEP``); failing that (a block longer than the window, only from a wrong
    model) at the last ``#STEP``, else keep the newest half."""
    steps = [i for i, t in enumerate(window) if t == tk.STEP_ID]
    for s in steps[-2:-1] + steps[-1:]:
        if s > 0:
            return s
    return len(window) - block_size // 2


def fit_window(tokens: list[int], start: int, block_size: int) -> int:
    """The window start for history ``tokens`` (current start ``start``): unchanged while the
    window fits, else restarted until it does."""
    while len(tokens) - start > block_size:
        start += restart_offset(tokens[start:], block_size)
    return start


# --- batched greedy decoding -------------------------------------------------------------------
def _amp(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model_device(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _pad(windows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, W) batch and the index of each row's last token."""
    W = max(len(w) for w in windows)
    x = torch.full((len(windows), W), tk.PAD_ID, dtype=torch.long)
    for i, w in enumerate(windows):
        x[i, : len(w)] = torch.tensor(w, dtype=torch.long)
    last = torch.tensor([len(w) - 1 for w in windows])
    return x.to(device, non_blocking=True), last.to(device, non_blocking=True)


def _last_logits(fwd, windows, device, **kw) -> torch.Tensor:
    x, last = _pad(windows, device)
    logits, _ = fwd(x, **kw)
    return logits[torch.arange(len(windows), device=device), last].float()  # (B, V)


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new: list[int], *, use_cache: bool = True,
                    stop_at_eos: bool = True, sync_every: int = 16, amp: bool = True,
                    fwd=None) -> tuple[list[list[int]], dict]:
    """Greedy continuations of ``prompts`` (one batch), each ending at the first EOS (included)
    or after ``max_new[i]`` tokens. ``use_cache=False`` re-encodes the whole window for every
    token (the reference, and the benchmark's baseline). Host syncs happen every
    ``sync_every`` tokens (to drop finished rows) and at window restarts, not per token.
    Returns the outputs and counters (generated tokens, window restarts)."""
    fwd = fwd or model
    bs = unwrap(model).config.block_size
    device = _model_device(model)
    n = len(prompts)
    plen = [len(p) for p in prompts]
    total = max(pl + m for pl, m in zip(plen, max_new))
    hist = torch.full((n, total), tk.PAD_ID, dtype=torch.long)  # (B, L) prompt + generated
    for i, p in enumerate(prompts):
        hist[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    hist = hist.to(device)
    starts = [fit_window(list(p), 0, bs) for p in prompts]
    active = list(range(n))  # original index of each current row
    outputs: list[list[int] | None] = [None] * n
    stats = {"generated_tokens": 0, "restarts": 0}
    host = [list(p) for p in prompts] if not use_cache else None  # uncached: histories on host
    with _amp(device, amp):
        windows = [list(p[s:]) for p, s in zip(prompts, starts)]
        cache = None
        if use_cache:
            cache = unwrap(model).new_kv_cache(n, device=device, dtype=torch.bfloat16 if (
                amp and device.type == "cuda") else None)
            logits = _last_logits(fwd, windows, device, kv_cache=cache)
            cache.set_lens(list(range(n)), [len(w) for w in windows])
        else:
            logits = _last_logits(fwd, windows, device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        pos = torch.tensor(plen, device=device)  # where each row's next token goes in `hist`
        rows = torch.arange(n, device=device)
        ngen = 0
        while active:
            tok = logits.argmax(-1)  # (B,)
            hist[rows, pos + ngen] = tok
            ngen += 1
            if stop_at_eos:
                done |= tok == tk.EOS_ID
            capped = any(ngen >= max_new[r] for r in active)
            restart = use_cache and any(cache.lens_host[i] >= bs for i in range(len(active)))
            if host is not None or capped or restart or ngen % sync_every == 0:
                fin = {i for i, r in enumerate(active) if ngen >= max_new[r]}
                if stop_at_eos:
                    fin |= set(done.nonzero().flatten().tolist())
                for i in sorted(fin):
                    r = active[i]
                    out = hist[i, plen[r]: plen[r] + min(ngen, max_new[r])].tolist()
                    if tk.EOS_ID in out and stop_at_eos:
                        out = out[: out.index(tk.EOS_ID) + 1]
                    outputs[r] = out
                    stats["generated_tokens"] += len(out)
                if fin:
                    keep = [i for i in range(len(active)) if i not in fin]
                    if not keep:
                        break
                    k = torch.tensor(keep, device=device)
                    hist, done, pos, tok = hist[k], done[k], pos[k], tok[k]
                    rows = torch.arange(len(keep), device=device)
                    starts = [starts[i] for i in keep]
                    active = [active[i] for i in keep]
                    if host is not None:
                        host = [host[i] for i in keep]
                    if cache is not None:
                        cache.keep(keep)
            if host is not None:  # re-encode every row's whole window
                for h, t in zip(host, tok.tolist()):
                    h.append(t)
                win = []
                for i, h in enumerate(host):
                    s = fit_window(h, starts[i], bs)
                    stats["restarts"] += s != starts[i]
                    starts[i] = s
                    win.append(h[s:])
                logits = _last_logits(fwd, win, device)
                continue
            full = [i for i in range(len(active)) if cache.lens_host[i] >= bs]
            if not full:
                logits = fwd(tok[:, None], kv_cache=cache)[0][:, -1].float()
                continue
            rest = [i for i in range(len(active)) if i not in full]
            logits = torch.empty(len(active), logits.size(-1), device=device)
            if rest:
                r_t = torch.tensor(rest, device=device)
                logits[r_t] = fwd(tok[r_t, None], kv_cache=cache, rows=rest)[0][:, -1].float()
            win = []
            for i in full:
                h = hist[i, : plen[active[i]] + ngen].tolist()
                starts[i] = fit_window(h, starts[i], bs)
                win.append(h[starts[i]:])
            stats["restarts"] += len(full)
            cache.set_lens(full, [0] * len(full))
            logits[torch.tensor(full, device=device)] = _last_logits(fwd, win, device, kv_cache=cache, rows=full)
            cache.set_lens(full, [len(w) for w in win])
    return outputs, stats


class _StaticStep:
    """One greedy decode step of every row with fixed shapes (``GPT.forward(static=True)``).

    Per row: ``tok`` is the next input, ``opos`` how many tokens it has generated (``out`` holds
    them), ``active`` whether it advances. An inactive row (waiting for a window restart, or
    finished) still runs through the model but writes nothing and stays where it is. On CUDA
    the step is captured once in a CUDA graph and replayed (one launch per token instead of
    ~500 kernels, issue 6); elsewhere it runs eagerly."""

    def __init__(self, fwd, cache, max_new: list[int], device, amp: bool, graph: bool | None = None,
                 stop_at_eos: bool = True):
        n = len(max_new)
        self.fwd, self.cache, self.device, self.amp = fwd, cache, device, amp
        self.stop_at_eos = stop_at_eos
        self.width = int(max(max_new))
        self.tok = torch.zeros(n, 1, dtype=torch.long, device=device)
        self.out = torch.full((n, self.width + 1), tk.PAD_ID, dtype=torch.long, device=device)
        self.opos = torch.zeros(n, dtype=torch.long, device=device)
        self.max_new = torch.tensor(max_new, dtype=torch.long, device=device)
        self.active = torch.zeros(n, dtype=torch.bool, device=device)
        self.done = torch.zeros(n, dtype=torch.bool, device=device)
        self.graph = None
        if graph is None:
            graph = device.type == "cuda"
        if graph:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up (kernels, workspaces); the caller resets the state
                    self._run()
            torch.cuda.current_stream(device).wait_stream(stream)
            try:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self._run()
            except Exception as e:  # capture unsupported here: run the same step eagerly
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding "
                              "without a graph", RuntimeWarning)
                self.graph = None
                torch.cuda.synchronize(device)

    def _run(self) -> None:
        cache = self.cache
        cache.lens.clamp_(max=cache.block_size - 1)  # a waiting row's writes stay in bounds
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
               if self.amp and self.device.type == "cuda" else contextlib.nullcontext())
        with ctx:
            logits = self.fwd(self.tok, kv_cache=cache, static=True)[0][:, -1]
        nxt = logits.argmax(-1)
        act = self.active
        col = torch.where(act, self.opos, self.width)  # inactive rows write the spare column
        self.out.scatter_(1, col[:, None], nxt[:, None])
        self.tok.copy_(torch.where(act[:, None], nxt[:, None], self.tok))
        if self.stop_at_eos:
            self.done |= act & (nxt == tk.EOS_ID)
        self.opos += act
        cache.lens += act
        self.active &= ~(self.done | (self.opos >= self.max_new))

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()


@torch.no_grad()
def greedy_generate_static(model, prompts: list[list[int]], max_new: list[int], *,
                           stop_at_eos: bool = True, sync_every: int = 32, amp: bool = True,
                           fwd=None, graph: bool | None = None,
                           restart_wait: int = 32) -> tuple[list[list[int]], dict]:
    """:func:`greedy_generate` with fixed shapes: every row runs every step (finished rows are
    frozen), attention spans the whole window masked per row, and the step is a CUDA graph on
    GPUs. A row whose window is full waits, frozen, until ``restart_wait`` steps have passed
    since the first row started waiting (or a quarter of the rows wait, or nothing else can
    run); then all waiting rows re-encode their step-aligned windows in one forward. Waiting
    changes nothing a row sees: same windows, same tokens as :func:`greedy_generate` (up to
    floating-point ties). The host syncs every ``sync_every`` steps and at restarts."""
    fwd = fwd or model
    raw = unwrap(model)
    bs = raw.config.block_size
    device = _model_device(model)
    n = len(prompts)
    cache = raw.new_kv_cache(n, device=device, dtype=torch.bfloat16 if (
        amp and device.type == "cuda") else None)
    step = _StaticStep(fwd, cache, list(max_new), device, amp, graph, stop_at_eos)
    cache.lens.zero_()  # forget the warm-up
    step.done.zero_()
    stats = {"generated_tokens": 0, "restarts": 0, "restart_batches": 0, "steps": 0}
    starts = [fit_window(list(p), 0, bs) for p in prompts]
    lens = [0] * n  # host copy of cache.lens (exact for rows that advance)

    def prefill(rows: list[int], windows: list[list[int]]) -> torch.Tensor:
        """Encode ``windows`` into those cache rows; the logits after each window."""
        cache.set_lens(rows, [0] * len(rows))
        with _amp(device, amp):
            logits = _last_logits(fwd, windows, device, kv_cache=cache,
                                  rows=None if len(rows) == n else rows)
        cache.set_lens(rows, [len(w) for w in windows])
        for r, w in zip(rows, windows):
            lens[r] = len(w)
        return logits

    # token 0 of every row comes from encoding its prompt; the step writes tokens 1..
    first = prefill(list(range(n)), [p[s:] for p, s in zip(prompts, starts)]).argmax(-1)
    step.tok[:, 0] = first
    step.out[:, 0] = first
    step.opos.fill_(1)
    if stop_at_eos:
        step.done |= first == tk.EOS_ID
    step.active.copy_(~step.done & (step.opos < step.max_new))
    live = [True] * n  # host view: not known to be finished (refreshed at syncs and restarts)
    waiting: list[int] = []
    wait_since = 0

    def wait_if_full(rows) -> None:
        nonlocal wait_since
        for r in rows:
            if lens[r] >= bs and r not in waiting:  # full window: freeze before the next step
                step.active[r] = False
                if not waiting:
                    wait_since = ngen
                waiting.append(r)

    ngen, limit = 1, 2 * max(max_new) + 4 * restart_wait * (1 + max(max_new) // 16) + 64
    wait_if_full(range(n))
    with _amp(device, amp):
        while any(live):
            moving = [r for r in range(n) if live[r] and r not in waiting]
            if waiting and (ngen - wait_since >= restart_wait or 4 * len(waiting) >= n or not moving):
                done, opos = step.done.tolist(), step.opos.tolist()
                go = [r for r in waiting if not done[r] and opos[r] < max_new[r]]
                for r in waiting:
                    live[r] = r in go
                if go:
                    wins = []
                    for r, g in zip(go, step.out[go].tolist()):
                        h = list(prompts[r]) + g[: opos[r]]
                        starts[r] = fit_window(h, starts[r], bs)
                        wins.append(h[starts[r]:])
                    stats["restarts"] += len(go)
                    stats["restart_batches"] += 1
                    # the last generated token stays the next input: encode the window before it
                    prefill(go, [w[:-1] for w in wins])
                    step.active[torch.tensor(go, device=device)] = True
                waiting = []
                continue
            step()
            ngen += 1
            if ngen > limit:
                raise RuntimeError(f"static decoding did not finish in {limit} steps")
            for r in moving:
                lens[r] += 1
            wait_if_full(moving)
            if ngen % sync_every == 0:
                done, opos = step.done.tolist(), step.opos.tolist()
                live = [live[r] and not done[r] and opos[r] < max_new[r] for r in range(n)]
    stats["steps"] = ngen
    got, opos = step.out.tolist(), step.opos.tolist()
    outputs = []
    for r in range(n):
        o = got[r][: min(opos[r], max_new[r])]
        if stop_at_eos and tk.EOS_ID in o:
            o = o[: o.index(tk.EOS_ID) + 1]
        outputs.append(o)
        stats["generated_tokens"] += len(o)
    return outputs, stats


# --- records and metrics -----------------------------------------------------------------------
@dataclass
class Record:
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


def final_state(ids: list[int]) -> list[int] | None:
    """Tokens of the last ``@^$<state>`` line (None when there is none)."""
    for i in range(len(ids) - 3, -1, -1):
        if ids[i] == AT and ids[i + 1] == CARET and ids[i + 2] == DOLLAR:
            j = i + 3
            while j < len(ids) and ids[j] not in LINE_END:
                j += 1
            return ids[i + 3: j]
    return None


def first_wrong(pred: list[int], target: list[int]) -> tuple[int, int, int] | None:
    """(token index, step block (1 = the first block after the prompt), line in that block)
    of the first difference, or None when equal."""
    k = next((i for i, (a, b) in enumerate(zip(pred, target)) if a != b), min(len(pred), len(target)))
    if k == len(pred) == len(target):
        return None
    before = target[:k]
    step = before.count(tk.STEP_ID) + 1
    last = max((i for i, t in enumerate(before) if t == tk.STEP_ID), default=-1)
    return k, step, before[last + 1:].count(tk.NEWLINE_ID)


def tf_segments(prompt_len: int, seq: list[int], block_size: int) -> list[tuple[int, int, int]]:
    """Teacher-forcing windows: (start, a, b) = one forward over ``seq[start:b]`` predicts the
    tokens a..b exactly as greedy decoding with a correct history would (same restarts)."""
    start = fit_window(seq[:prompt_len], 0, block_size)
    segs, a, N = [], prompt_len, len(seq)
    for p in range(prompt_len, N - 1):
        if p + 1 - start > block_size:  # token p+1 is predicted from a restarted window
            segs.append((start, a, p))
            start = fit_window(seq[: p + 1], start, block_size)
            a = p + 1
    segs.append((start, a, N - 1))
    return segs


@torch.no_grad()
def teacher_forced(model, records: list[Record], batch_size: int = 32, amp: bool = True, fwd=None) -> list[np.ndarray]:
    """Argmax prediction of every target token with the true previous tokens in context."""
    fwd = fwd or model
    bs = unwrap(model).config.block_size
    device = _model_device(model)
    jobs = []  # (record, start, a, b)
    seqs = [r.prompt_ids + r.target_ids for r in records]
    for ri, (r, seq) in enumerate(zip(records, seqs)):
        jobs += [(ri, s, a, b) for s, a, b in tf_segments(len(r.prompt_ids), seq, bs)]
    jobs.sort(key=lambda j: j[3] - j[1])
    preds = [np.zeros(len(r.target_ids), dtype=np.int64) for r in records]
    with _amp(device, amp):
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i: i + batch_size]
            x, _ = _pad([seqs[ri][s:b] for ri, s, a, b in chunk], device)
            am = fwd(x)[0].argmax(-1).cpu().numpy()  # (B, W)
            for row, (ri, s, a, b) in zip(am, chunk):
                plen = len(records[ri].prompt_ids)
                preds[ri][a - plen: b + 1 - plen] = row[a - 1 - s: b - s]
    return preds


def tf_metrics(target: list[int], pred: np.ndarray) -> dict:
    """Per-step blocks right / total and state tokens right / total for one example."""
    t = np.asarray(target)
    ok = pred == t
    ends = np.flatnonzero((t == tk.STEP_ID) | (t == tk.EOS_ID))  # each block ends at the next STEP/EOS
    blocks_ok, a = 0, 0
    for e in ends:
        blocks_ok += bool(ok[a: e + 1].all())
        a = e + 1
    in_state = np.zeros(len(t), dtype=bool)
    state = False
    for i, tok in enumerate(target):
        if tok in LINE_END:
            state = False
        elif state:
            in_state[i] = True
        elif tok == DOLLAR:
            state = True
    return {"blocks": len(ends), "blocks_ok": blocks_ok, "state_tokens": int(in_state.sum()),
            "state_ok": int((ok & in_state).sum())}


def evaluate(model, data, batch_size: int = 32, limit: int | None = None, device=None, *,
             use_cache: bool = True, max_len_factor: float = 2.0, teacher_forcing: bool = True,
             amp: bool = True, compile: bool = False, progress: bool = False, sync_every: int = 16,
             decode: str = "auto", eos_prefix: bool = False):
    """Greedy exact match of ``model`` on ``data`` (a Dataset, DataFrame, dicts or Records).

    A row may generate up to ``ceil(max_len_factor * len(target)) + 16`` tokens: a longer output
    is wrong anyway, and the margin leaves room to read a late final state. ``eos_prefix``
    starts every prompt with the end-of-example token, as every example in the training stream
    is preceded by one (off by default; the `cpu` scale turns it on, notes/issue4-cpu-scale.md).
    ``decode``: ``"static"`` (:func:`greedy_generate_static`, a CUDA graph per token),
    ``"dynamic"`` (:func:`greedy_generate`, drops finished rows: best on CPUs) or ``"auto"``
    (static on CUDA with the KV cache, else dynamic).
    Returns ``(records DataFrame, summary dict)``; the summary has ``exact_match``, ``n``,
    ``step_em_tf``, ``final_state_match``, ``state_token_acc`` and throughput."""
    import pandas as pd
    from tqdm.auto import tqdm

    if isinstance(data, list) and data and isinstance(data[0], Record):
        records = data[:limit]
    else:
        records = make_records(data, limit)
    if not records:
        raise ValueError("no examples to evaluate")
    if eos_prefix:
        records = [replace(r, prompt_ids=[tk.EOS_ID] + r.prompt_ids) for r in records]
    if device is not None:
        model = model.to(device)
    model.eval()
    dev = _model_device(model)
    fwd = torch.compile(model, dynamic=True) if compile else model
    if decode not in ("auto", "static", "dynamic"):
        raise ValueError(f"decode must be auto, static or dynamic, got {decode!r}")
    static = use_cache and (decode == "static" or (decode == "auto" and dev.type == "cuda"))
    order = sorted(range(len(records)), key=lambda i: -(len(records[i].prompt_ids) + len(records[i].target_ids)))
    preds: list[list[int] | None] = [None] * len(records)
    stats = {"generated_tokens": 0, "restarts": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), desc="eval", disable=not progress, file=sys.stderr)
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        prompts = [records[j].prompt_ids for j in idx]
        caps = [math.ceil(max_len_factor * len(records[j].target_ids)) + 16 for j in idx]
        if static:
            outs, st = greedy_generate_static(model, prompts, caps, amp=amp, fwd=fwd,
                                              sync_every=max(sync_every, 32))
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
    rows, tot = [], {"blocks": 0, "blocks_ok": 0, "state_tokens": 0, "state_ok": 0}
    for i, (r, p) in enumerate(zip(records, preds)):
        text = tk.decode(p)
        fw = first_wrong(p, r.target_ids)
        fs_pred, fs_true = final_state(p), final_state(r.target_ids)
        row = {
            "index": i, "prompt": r.prompt, "target": r.target, "prediction": text,
            "correct": text == r.target,
            "first_wrong_token": fw[0] if fw else None, "first_wrong_step": fw[1] if fw else None,
            "first_wrong_line": fw[2] if fw else None,
            "final_state_match": fs_pred is not None and fs_pred == fs_true,
            "finished": bool(p) and p[-1] == tk.EOS_ID,
            "n_target_tokens": len(r.target_ids), "n_generated": len(p),
        }
        if tf is not None:
            m = tf_metrics(r.target_ids, tf[i])
            for k in tot:
                tot[k] += m[k]
            row["step_em_tf"] = m["blocks_ok"] / m["blocks"]
            row["state_token_acc"] = m["state_ok"] / m["state_tokens"] if m["state_tokens"] else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    n = len(df)
    summary = {
        "exact_match": float(df["correct"].mean()),
        "n": n,
        "step_em_tf": tot["blocks_ok"] / tot["blocks"] if tf is not None else None,
        "final_state_match": float(df["final_state_match"].mean()),
        "state_token_acc": tot["state_ok"] / tot["state_tokens"] if tf is not None and tot["state_tokens"] else None,
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


# --- command line ------------------------------------------------------------------------------
def _resolve_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _eval_cli(args) -> int:
    from tinytrace.data import load

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be >= 1")
    model = load_checkpoint(args.checkpoint)
    data = load(args.data, args.config, args.split)
    df, summary = evaluate(model, data, batch_size=args.batch_size, limit=args.limit,
                           device=_resolve_device(args.device), use_cache=not args.no_cache,
                           max_len_factor=args.max_len_factor, compile=args.compile, progress=True)
    summary.update(checkpoint=str(args.checkpoint), data=str(args.data), config=args.config, split=args.split)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_json(out / "records.jsonl", orient="records", lines=True)
        meta = json.loads((Path(args.checkpoint) / "config.json").read_text())
        (out / "summary.json").write_text(json.dumps({**summary, "model": meta["model"],
                                                      "versions": versions(), "hardware": hardware()}, indent=2) + "\n")
    if not args.json:
        for k, v in summary.items():
            print(f"{k:>22}: {v}")
    else:
        print(json.dumps(summary))
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="greedy exact-match evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder with model.safetensors + config.json")
    p.add_argument("--data", required=True, help="built dataset folder (tinytrace data build)")
    p.add_argument("--config", default="base", help="dataset config (preset name)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--limit", type=int, default=None, help="first N examples only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-cache", action="store_true", help="re-encode the window for every token")
    p.add_argument("--max-len-factor", type=float, default=2.0,
                   help="generation cap: factor * target length + 16 tokens")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=None, help="folder for records.jsonl and summary.json")
    p.add_argument("--json", action="store_true", help="print only one JSON line")
    p.set_defaults(func=_eval_cli)


# --- benchmark ---------------------------------------------------------------------------------
def bench_eval(args) -> int:
    """Generated tokens/s and traces/s of decoding modes on the same traces in one run:
    ``cached`` (KV cache, finished rows dropped), ``uncached`` (re-encode the window every
    token), ``static`` (fixed shapes, a CUDA graph per token on GPUs). ``--modes`` picks them
    (default ``cached,uncached``; ``speedup`` = first mode over second).

    Random-weight models rarely emit EOS, so every row generates exactly its target's length
    (no EOS stop); all modes must produce identical tokens (reported as ``outputs_equal``).
    ``--data DIR --config NAME`` reads a Hub-layout test split with pyarrow (no ``datasets``)."""
    import tempfile

    from tinytrace.data import build_preset, load, read_split

    limit, bsz = int(args.limit), int(args.batch_size)
    if limit < 1 or bsz < 1:
        raise ValueError("--limit and --batch-size must be >= 1")
    modes = [m.strip() for m in (getattr(args, "modes", None) or "cached,uncached").split(",") if m.strip()]
    bad = [m for m in modes if m not in ("cached", "uncached", "static")]
    if bad or not modes:
        raise ValueError(f"--modes: choose from cached, uncached, static (got {modes})")
    device = _resolve_device(getattr(args, "device", None))
    if getattr(args, "checkpoint", None):
        model, name = load_checkpoint(args.checkpoint), str(args.checkpoint)
    else:
        torch.manual_seed(0)
        model, name = GPT(get_model_config(args.model)), args.model
    model = model.to(device).eval()
    data_dir = getattr(args, "data", None)
    config = getattr(args, "config", None) or "base"
    if data_dir:
        records = make_records(read_split(data_dir, config, "test"), limit)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_preset("base", tmp, limit + 64, seed=0, test_size=limit, validation_size=0,
                         workers=1, progress=False, tokens=False)
            records = make_records(load(tmp, config, "test"), limit)
    cap = getattr(args, "max_new_tokens", None)
    order = sorted(records, key=lambda r: -(len(r.prompt_ids) + len(r.target_ids)))
    result = {"model": name, "params": unwrap(model).num_params(), "device": str(device),
              "traces": len(order), "batch_size": bsz,
              "threads": torch.get_num_threads() if device.type == "cpu" else None}
    outs = {}
    for mode in modes:
        t0, toks, outs[mode] = time.perf_counter(), 0, []
        for i in range(0, len(order), bsz):
            chunk = order[i: i + bsz]
            prompts = [r.prompt_ids for r in chunk]
            caps = [min(len(r.target_ids), cap or 1 << 30) for r in chunk]
            if mode == "static":
                o, st = greedy_generate_static(model, prompts, caps, stop_at_eos=False)
            else:
                o, st = greedy_generate(model, prompts, caps, use_cache=mode == "cached",
                                        stop_at_eos=False)
            outs[mode] += o
            toks += st["generated_tokens"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        result[f"{mode}_tokens_per_s"] = round(toks / dt, 1)
        result[f"{mode}_traces_per_s"] = round(len(order) / dt, 3)
        result[f"{mode}_seconds"] = round(dt, 3)
        result["generated_tokens"] = toks
    result["modes"] = modes
    if len(modes) > 1:
        result["speedup"] = round(result[f"{modes[0]}_tokens_per_s"] / result[f"{modes[1]}_tokens_per_s"], 2)
    result["outputs_equal"] = all(outs[m] == outs[modes[0]] for m in modes)
    if not getattr(args, "json", False):
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result))
    return 0
