"""Greedy decoding through a deterministic sliding window (paper Sec. 3.3, App. C.5).

Traces are longer than the 512-token context, so decoding uses a deterministic sliding window
(C.5): when the next token would not fit, the window restarts at the ``#STEP`` token opening the
previous step block (the data's determinism filter guarantees that two consecutive blocks fit)
and is re-encoded; with learned absolute positions the positions restart at 0, as in training's
random windows. Decoding is batched (rows sorted by length, right padding, a KV cache, finished
rows dropped) and equals one-at-a-time greedy decoding without the cache (tested).
:func:`greedy_generate_static` is the same decoding with fixed shapes (a CUDA graph per token
on GPUs); :func:`teacher_forced` predicts every target token from the true history through the
windows the decoder would have used.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import numpy as np
import torch
from torch import nn

from tinytrace.lang import tokenizer as tk
from tinytrace.model import unwrap
from tinytrace.provenance import autocast_dtype

# torch.profiler ranges of static decoding's phases (`tinytrace bench eval --profile-steps`)
PHASES = ("static.prefill", "static.capture", "static.step", "static.sync")
_phase = torch.profiler.record_function


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
def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast (and KV cache) dtype of decoding on ``device``: the one training uses there
    (:func:`tinytrace.provenance.autocast_dtype`), None without ``amp``."""
    return autocast_dtype(device) if enabled else None


def _amp(device: torch.device, enabled: bool, **kw):
    dtype = _amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, **kw)


def amp_weights(model, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` for inference under ``dtype`` autocast with its Linear weights and
    biases (the tied head included) stored in ``dtype``: the same logits bit for bit, since
    autocast casts exactly those tensors to ``dtype`` before each matmul, without the casts.
    A decode step in a CUDA graph runs with autocast's weight cache off, so it would otherwise
    cast every Linear weight again at every token. Embeddings, norms and position tables stay
    as they are (the head's copy unties it from the embedding)."""
    twin = copy.deepcopy(unwrap(model)).eval()
    for m in twin.modules():
        if isinstance(m, nn.Linear):
            for name in ("weight", "bias"):
                t = getattr(m, name)
                if t is not None:
                    setattr(m, name, nn.Parameter(t.detach().to(dtype), requires_grad=False))
    return twin


def model_device(model) -> torch.device:
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
    device = model_device(model)
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
            cache = unwrap(model).new_kv_cache(n, device=device, dtype=_amp_dtype(device, amp))
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
    up to ``capacity`` of them), ``active`` whether it advances. An inactive row (waiting for a
    window restart, finished, or a spare row of a short batch) still runs through the model but
    writes nothing and stays where it is. Attention spans ``width`` columns, which must exceed
    every active row's cached length. On CUDA the step is captured in a CUDA graph per width on
    its first use and replayed (one launch per token instead of one per kernel); elsewhere it
    runs eagerly. :meth:`reset` readies the same buffers (and graphs) for the next batch."""

    def __init__(self, fwd, cache, capacity: int, device, amp: bool, graph: bool | None = None):
        n = cache.batch
        self.fwd, self.cache, self.device, self.amp = fwd, cache, device, amp
        self.capacity = int(capacity)  # column `capacity` of `out`: where inactive rows write
        self.tok = torch.zeros(n, 1, dtype=torch.long, device=device)
        self.out = torch.full((n, self.capacity + 1), tk.PAD_ID, dtype=torch.long, device=device)
        self.opos = torch.zeros(n, dtype=torch.long, device=device)
        self.max_new = torch.zeros(n, dtype=torch.long, device=device)
        self.active = torch.zeros(n, dtype=torch.bool, device=device)
        self.done = torch.zeros(n, dtype=torch.bool, device=device)
        # stop at EOS or not: a tensor, so one graph serves both
        self.eos = torch.ones((), dtype=torch.bool, device=device)
        self.use_graph = device.type == "cuda" if graph is None else graph
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}  # None: capture failed

    def reset(self, max_new: list[int], stop_at_eos: bool) -> None:
        """Every row idle, ``max_new[i]`` the cap of row i (rows past ``max_new`` never run;
        the caller sized the buffers: :meth:`StaticDecoder._buffers`)."""
        caps = list(max_new) + [0] * (self.cache.batch - len(max_new))
        self.max_new.copy_(torch.tensor(caps, dtype=torch.long))
        for t in (self.tok, self.opos, self.active, self.done):
            t.zero_()
        self.eos.fill_(stop_at_eos)

    def _run(self, width: int) -> None:
        cache = self.cache
        cache.lens.clamp_(max=cache.block_size - 1)  # a waiting row's writes stay in bounds
        with _amp(self.device, self.amp, cache_enabled=False):
            logits = self.fwd(self.tok, kv_cache=cache, static=True, width=width)[0][:, -1]
        nxt = logits.argmax(-1)
        act = self.active
        col = torch.where(act, self.opos, self.capacity)  # inactive rows write the spare column
        self.out.scatter_(1, col[:, None], nxt[:, None])
        self.tok.copy_(torch.where(act[:, None], nxt[:, None], self.tok))
        self.done |= act & (nxt == tk.EOS_ID) & self.eos
        self.opos += act
        cache.lens += act
        self.active &= ~(self.done | (self.opos >= self.max_new))

    @contextlib.contextmanager
    def frozen(self):
        """Every row inactive inside: steps run then (warm-up, capture) change no row's output,
        input, length or state; a row's key/value written at its next column is the one its
        next real step writes there."""
        active = self.active.clone()
        self.active.zero_()
        try:
            yield
        finally:
            self.active.copy_(active)

    def prepare(self, width: int) -> None:
        """Make the step at ``width`` ready without changing any row: its CUDA graph captured
        (on CUDA), a compiled forward compiled (first call)."""
        if width in self.graphs:
            return
        if not self.use_graph:
            with self.frozen():
                self._run(width)
            self.graphs[width] = None
            return
        with _phase("static.capture"):
            self._capture(width)

    def _capture(self, width: int) -> None:
        device = self.device
        with self.frozen():
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up (kernels, workspaces, a compiled forward's compile)
                    self._run(width)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):  # its own pool: widths replay in any order
                    self._run(width)
            except Exception as e:  # capture unsupported here: run the same step eagerly
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding "
                              "without a graph", RuntimeWarning)
                graph = None
                torch.cuda.synchronize(device)
        self.graphs[width] = graph

    def __call__(self, width: int) -> None:
        if self.use_graph and width not in self.graphs:
            self.prepare(width)
        with _phase("static.step"):
            graph = self.graphs.get(width)
            if graph is not None:
                graph.replay()
            else:
                self._run(width)


def attention_widths(block_size: int, buckets: int) -> list[int]:
    """The widths static decoding attends over: ``buckets`` steps up to ``block_size``, each a
    multiple of 8 (1 bucket: always the whole window)."""
    if buckets < 1:
        raise ValueError(f"width_buckets must be >= 1, got {buckets}")
    return sorted({min(block_size, -(-block_size * k // buckets // 8) * 8)
                   for k in range(1, buckets + 1)})


class StaticDecoder:
    """:func:`greedy_generate` with fixed shapes, for batch after batch: every row runs every
    step (finished rows are frozen), attention spans a fixed width masked per row, and the step
    is a CUDA graph on GPUs. One KV cache, one set of step buffers and one graph per attention
    width serve every call (a shorter batch leaves its spare rows idle), so a whole evaluation
    captures each width once; a call with more rows or a longer cap than the buffers have
    rebuilds them (``batch``/``capacity``: their size up front, else the first call's).

    The width is the smallest of ``width_buckets`` steps up to the context
    (:func:`attention_widths`) that holds every advancing row's window: short windows read
    less of the cache, at one graph per width. ``compile``: the step's forward goes through
    ``torch.compile`` with fixed shapes (one compiled graph per width, inside the CUDA graph;
    True, or a mode that makes no CUDA graphs of its own: ``default`` or
    ``max-autotune-no-cudagraphs``); prompts are encoded by ``fwd`` (default: the model)
    either way. It changes the kernels, not the decoding (same tokens up to floating-point
    ties). ``cast_weights``: under autocast (GPUs), a step that would run on the model itself
    (no ``fwd`` of the caller's) runs on a copy holding its Linear weights in the autocast
    dtype (:func:`amp_weights`: the same logits, without casting every Linear weight at every
    token); False: on ``fwd``, casting as autocast does. The copy is made at construction: a
    model trained on afterwards needs a new decoder."""

    def __init__(self, model, *, fwd=None, amp: bool = True, graph: bool | None = None,
                 width_buckets: int = 4, compile: bool | str = False, batch: int | None = None,
                 capacity: int | None = None, cast_weights: bool = True):
        self.model, self.fwd, self.amp, self.graph = model, fwd or model, amp, graph
        raw = unwrap(model)
        self.block_size = raw.config.block_size
        self.device = model_device(model)
        self.widths = attention_widths(self.block_size, width_buckets)
        dtype = _amp_dtype(self.device, amp)
        cast = cast_weights and dtype is not None and self.fwd is model
        stepper = amp_weights(raw, dtype) if cast else raw  # what the step runs, compiled or not
        self.step_fwd = self.fwd if stepper is raw else stepper
        if compile:
            mode = None if compile is True else compile
            if mode not in (None, "default", "max-autotune-no-cudagraphs"):
                raise ValueError(f"compile mode {mode!r} makes CUDA graphs of its own; use "
                                 "default or max-autotune-no-cudagraphs")
            self.step_fwd = torch.compile(stepper, dynamic=False, mode=mode)
        self.size = (batch, capacity)
        self.step: _StaticStep | None = None

    def _buffers(self, n: int, capacity: int) -> _StaticStep:
        step = self.step
        if step is None or n > step.cache.batch or capacity > step.capacity:
            # grow (the graphs hold the old buffers, so they go too), never shrink
            b, c = self.size
            self.size = (max(n, b or 0), max(capacity, c or 0))
            cache = unwrap(self.model).new_kv_cache(self.size[0], device=self.device,
                                                    dtype=_amp_dtype(self.device, self.amp))
            self.step = step = _StaticStep(self.step_fwd, cache, self.size[1], self.device,
                                           self.amp, self.graph)
        return step

    @torch.no_grad()
    def prepare(self, batch: int | None = None, capacity: int | None = None) -> None:
        """Capture (and compile) the step at every width now, so no later call pays for it."""
        b, c = self.size
        step = self._buffers(batch or b or 1, capacity or c or 1)
        with _amp(self.device, self.amp):
            for w in self.widths:
                step.prepare(w)

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], max_new: list[int], *, stop_at_eos: bool = True,
                 sync_every: int = 32, restart_wait: int = 32) -> tuple[list[list[int]], dict]:
        """Greedy continuations of ``prompts``, as :func:`greedy_generate`. A row whose window
        is full waits, frozen, until ``restart_wait`` steps have passed since the first row
        started waiting (or a quarter of the rows wait, or nothing else can run); then all
        waiting rows re-encode their step-aligned windows in one forward. Waiting changes
        nothing a row sees: same windows, same tokens as :func:`greedy_generate` (up to
        floating-point ties). The host syncs every ``sync_every`` steps, at restarts and at
        the step by which every advancing row reaches its cap."""
        n, bs, device, widths = len(prompts), self.block_size, self.device, self.widths
        if n == 0:
            raise ValueError("no prompts to decode")
        step = self._buffers(n, max(max_new))
        cache = step.cache
        graphs_before = len(step.graphs)
        step.reset(list(max_new), stop_at_eos)
        stats = {"generated_tokens": 0, "restarts": 0, "restart_batches": 0, "steps": 0,
                 "width_steps": dict.fromkeys(widths, 0)}
        starts = [fit_window(list(p), 0, bs) for p in prompts]
        lens = [0] * n  # host copy of cache.lens (exact for rows that advance)
        if cache.batch > n:  # spare rows: write column 0, advance never
            cache.set_lens(list(range(n, cache.batch)), [0] * (cache.batch - n))

        def prefill(rows: list[int], windows: list[list[int]]) -> torch.Tensor:
            """Encode ``windows`` into those cache rows; the logits after each window."""
            cache.set_lens(rows, [0] * len(rows))
            with _amp(device, self.amp), _phase("static.prefill"):
                logits = _last_logits(self.fwd, windows, device, kv_cache=cache,
                                      rows=None if len(rows) == cache.batch else rows)
            cache.set_lens(rows, [len(w) for w in windows])
            for r, w in zip(rows, windows):
                lens[r] = len(w)
            return logits

        # token 0 of every row comes from encoding its prompt; the step writes tokens 1..
        first = prefill(list(range(n)), [p[s:] for p, s in zip(prompts, starts)]).argmax(-1)
        step.tok[:n, 0] = first
        step.out[:n, 0] = first
        step.opos[:n] = 1
        if stop_at_eos:
            step.done[:n] |= first == tk.EOS_ID
        step.active.copy_(~step.done & (step.opos < step.max_new))
        live = [True] * n  # host view: not known to be finished (refreshed at syncs and restarts)
        waiting: dict[int, None] = {}  # rows frozen until the next restart, in order (O(1) `in`)
        wait_since = 0

        def wait_if_full(rows) -> None:
            nonlocal wait_since
            for r in rows:
                if lens[r] >= bs and r not in waiting:  # full window: freeze before the next step
                    step.active[r] = False
                    if not waiting:
                        wait_since = ngen
                    waiting[r] = None

        def capped_at(opos) -> int:
            """The step by which every advancing row has reached its cap (each advances a token
            a step; ``opos`` is current): a sync there ends a batch whose rows run to their caps
            without stepping on to the next regular sync."""
            return ngen + max((max_new[r] - opos[r] for r in range(n) if live[r] and r not in waiting),
                              default=0)

        ngen, limit = 1, 2 * max(max_new) + 4 * restart_wait * (1 + max(max_new) // 16) + 64
        wait_if_full(range(n))
        sync_at = capped_at([1] * n)
        with _amp(device, self.amp):
            while any(live):
                moving = [r for r in range(n) if live[r] and r not in waiting]
                if waiting and (ngen - wait_since >= restart_wait or 4 * len(waiting) >= n or not moving):
                    with _phase("static.sync"):
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
                    waiting = {}
                    sync_at = capped_at(opos)
                    continue
                need = max(lens[r] for r in moving) + 1  # host lengths: exact or too long
                width = next(w for w in widths if w >= need)
                step(width)
                stats["width_steps"][width] += 1
                ngen += 1
                if ngen > limit:
                    raise RuntimeError(f"static decoding did not finish in {limit} steps")
                for r in moving:
                    lens[r] += 1
                wait_if_full(moving)
                if ngen % sync_every == 0 or ngen >= sync_at:
                    with _phase("static.sync"):
                        done, opos = step.done.tolist(), step.opos.tolist()
                    live = [live[r] and not done[r] and opos[r] < max_new[r] for r in range(n)]
                    sync_at = capped_at(opos)
        stats["steps"] = ngen
        # the CUDA graphs this decoder holds (0: eager steps only) and how many this call captured
        stats["graphs"] = sum(g is not None for g in step.graphs.values())
        stats["captures"] = len(step.graphs) - graphs_before
        got, opos = step.out[:n].tolist(), step.opos[:n].tolist()
        outputs = []
        for r in range(n):
            o = got[r][: min(opos[r], max_new[r])]
            if stop_at_eos and tk.EOS_ID in o:
                o = o[: o.index(tk.EOS_ID) + 1]
            outputs.append(o)
            stats["generated_tokens"] += len(o)
        return outputs, stats


def greedy_generate_static(model, prompts: list[list[int]], max_new: list[int], *,
                           stop_at_eos: bool = True, sync_every: int = 32, amp: bool = True,
                           fwd=None, graph: bool | None = None, restart_wait: int = 32,
                           width_buckets: int = 4) -> tuple[list[list[int]], dict]:
    """One batch through a :class:`StaticDecoder` of its own (its arguments and
    :meth:`StaticDecoder.__call__`'s)."""
    dec = StaticDecoder(model, fwd=fwd, amp=amp, graph=graph, width_buckets=width_buckets)
    return dec(prompts, max_new, stop_at_eos=stop_at_eos, sync_every=sync_every,
               restart_wait=restart_wait)


# --- teacher forcing ---------------------------------------------------------------------------
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
def teacher_forced(model, records: list, batch_size: int = 32, amp: bool = True, fwd=None) -> list[np.ndarray]:
    """Argmax prediction of every target token with the true previous tokens in context;
    ``records`` have ``prompt_ids`` and ``target_ids`` (:class:`.core.Record`)."""
    fwd = fwd or model
    bs = unwrap(model).config.block_size
    device = model_device(model)
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


