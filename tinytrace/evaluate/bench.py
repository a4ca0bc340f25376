"""Decoding throughput: generated tokens/s and traces/s of the decoding modes."""
from __future__ import annotations

import tempfile
import time
from collections import Counter

import torch

from tinytrace.data import build_preset, load, read_split
from tinytrace.model import GPT, get_model_config, load_checkpoint, unwrap

from .core import make_records, resolve_device
from .decode import PHASES, StaticDecoder, greedy_generate

MODES = ("cached", "uncached", "static", "static-full", "static-compiled", "static-autocast")


def bench_eval(model: str = "tiny", checkpoint=None, limit: int = 64, batch_size: int = 64,
               data=None, config: str = "base", modes="cached,uncached",
               max_new_tokens: int | None = None, device: str | None = None,
               profile_steps: int = 0) -> dict:
    """Generated tokens/s and traces/s of decoding modes on the same traces in one run:
    ``cached`` (KV cache, finished rows dropped), ``uncached`` (re-encode the window every
    token), ``static`` (fixed shapes, a CUDA graph per token on GPUs, attention over the width
    the windows need), ``static-full`` (the same over the whole context) and
    ``static-compiled`` (``static`` with the step's forward through ``torch.compile``) and
    ``static-autocast`` (``static`` with the fp32 weights cast by autocast at every step, where
    ``static`` steps on a copy holding them in the autocast dtype; the same on a CPU).
    ``modes`` picks them, a comma list or a sequence (``speedup`` = first mode over second).
    Static modes also report their decode steps, restart forwards, steps per attention width
    and the CUDA graphs captured (0: every step ran eagerly).

    The model is the ``model`` preset with random weights, or the run in ``checkpoint``.
    Random-weight models rarely emit EOS, so every row generates exactly its target's length
    (no EOS stop; at most ``max_new_tokens``); all modes must produce identical tokens
    (reported as ``outputs_equal``). ``data`` + ``config``: a Hub-layout test split read with
    pyarrow (no ``datasets``); without ``data``, ``limit`` base traces are built. Before the
    timed runs, untimed (``warmup_seconds``, and per static mode ``<mode>_prepare_seconds``):
    each static mode's decoder (one per mode, for all its batches) captures, and compiles, its
    step at every attention width, then each mode decodes 8 tokens of the first batch.

    ``profile_steps`` > 0: afterwards, static decoding of the first batch (the longest traces),
    in the first static mode of ``modes`` (else ``static``), for that many tokens runs once
    more under ``torch.profiler`` (``profile``: the mode, the time in each phase, prefill,
    graph capture, step, host sync, and the kernels that take the most device time): where a
    decode step's time goes, apart from the timed runs."""
    limit, bsz = int(limit), int(batch_size)
    if limit < 1 or bsz < 1:
        raise ValueError("--limit and --batch-size must be >= 1")
    modes = modes or "cached,uncached"
    modes = [m.strip() for m in (modes.split(",") if isinstance(modes, str) else modes) if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes: choose from {', '.join(MODES)} (got {modes})")
    dev = resolve_device(device)
    if checkpoint:
        net, name = load_checkpoint(checkpoint), str(checkpoint)
    else:
        torch.manual_seed(0)
        net, name = GPT(get_model_config(model)), model
    net = net.to(dev).eval()
    config = config or "base"
    if data:
        records = make_records(read_split(data, config, "test"), limit)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_preset("base", tmp, limit + 64, seed=0, test_size=limit, validation_size=0,
                         workers=1, progress=False, tokens=False)
            records = make_records(load(tmp, config, "test"), limit)
    order = sorted(records, key=lambda r: -(len(r.prompt_ids) + len(r.target_ids)))
    result = {"model": name, "params": unwrap(net).num_params(), "device": str(dev),
              "traces": len(order), "batch_size": bsz,
              "threads": torch.get_num_threads() if dev.type == "cpu" else None}

    cap_all = min(max(len(r.target_ids) for r in order), max_new_tokens or 1 << 30)

    def decoder(mode):
        return StaticDecoder(net, width_buckets=1 if mode == "static-full" else 4,
                             compile=mode == "static-compiled", batch=min(bsz, len(order)),
                             capacity=cap_all, cast_weights=mode != "static-autocast")

    decoders = {m: decoder(m) for m in modes if m.startswith("static")}

    def decode(mode, chunk, cap, dec=None):
        prompts = [r.prompt_ids for r in chunk]
        caps = [min(len(r.target_ids), cap) for r in chunk]
        if mode.startswith("static"):
            return (dec or decoders[mode])(prompts, caps, stop_at_eos=False)
        return greedy_generate(net, prompts, caps, use_cache=mode == "cached", stop_at_eos=False)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # untimed, so no mode pays for one-off work: the process's first kernels (CUDA and cuBLAS
    # start-up, kernel choices, first allocations), graph captures and compiles
    t0 = time.perf_counter()
    for mode in modes:
        if mode in decoders:
            t1 = time.perf_counter()
            decoders[mode].prepare()
            sync()
            result[f"{mode}_prepare_seconds"] = round(time.perf_counter() - t1, 3)
        decode(mode, order[:bsz], 8)
    sync()
    result["warmup_seconds"] = round(time.perf_counter() - t0, 3)
    outs = {}
    for mode in modes:
        t0, toks, outs[mode] = time.perf_counter(), 0, []
        steps = {"steps": 0, "restart_batches": 0, "graphs": 0, "captures": 0,
                 "width_steps": Counter()}
        for i in range(0, len(order), bsz):
            o, st = decode(mode, order[i: i + bsz], max_new_tokens or 1 << 30)
            if mode.startswith("static"):
                for k in ("steps", "restart_batches", "captures"):
                    steps[k] += st[k]
                steps["graphs"] = st["graphs"]  # held by the mode's decoder
                steps["width_steps"].update(st["width_steps"])
            outs[mode] += o
            toks += st["generated_tokens"]
        sync()
        dt = time.perf_counter() - t0
        result[f"{mode}_tokens_per_s"] = round(toks / dt, 1)
        result[f"{mode}_traces_per_s"] = round(len(order) / dt, 3)
        result[f"{mode}_seconds"] = round(dt, 3)
        if mode.startswith("static"):
            result[f"{mode}_steps"] = dict(steps, width_steps=dict(sorted(steps["width_steps"].items())))
        result["generated_tokens"] = toks
    result["modes"] = modes
    if len(modes) > 1:
        result["speedup"] = round(result[f"{modes[0]}_tokens_per_s"] / result[f"{modes[1]}_tokens_per_s"], 2)
    result["outputs_equal"] = all(outs[m] == outs[modes[0]] for m in modes)
    if profile_steps > 0:
        try:  # a diagnostic: if the profiler fails, the timings above still count
            # a decoder of its own: the profile shows the captures too (a compiled step's
            # forward was compiled for these shapes already: the profile does not recompile)
            mode = next((m for m in modes if m.startswith("static")), "static")
            result["profile"] = {"mode": mode} | profile_static(
                lambda: decode(mode, order[:bsz], profile_steps, decoder(mode)),
                cuda=dev.type == "cuda")
        except Exception as e:
            result["profile"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return result


def profile_static(decode_batch, cuda: bool, top: int = 8) -> dict:
    """``decode_batch()`` (static decoding of one batch: outputs and stats) under
    ``torch.profiler``: its wall seconds and steps, each phase's host milliseconds and calls
    (:data:`.decode.PHASES`), and the ``top`` operators and kernels by self device time (on
    CUDA, the kernels inside graph replays too) with the total."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        outs, st = decode_batch()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    phases = {e.key: {"host_ms": round(e.cpu_time_total / 1e3, 2), "calls": e.count}
              for e in events if e.key in PHASES}
    dev_time = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted((e for e in events if e.key not in PHASES and getattr(e, dev_time, 0) > 0),
                 key=lambda e: -getattr(e, dev_time))
    return {"rows": len(outs), "steps": st["steps"], "graphs": st["graphs"],
            "wall_seconds": round(wall, 3),
            "phases": phases, "device": "cuda" if cuda else "cpu",
            "device_ms_total": round(sum(getattr(e, dev_time) for e in ops) / 1e3, 2),
            "top": [{"name": e.key[:120], "ms": round(getattr(e, dev_time) / 1e3, 2),
                     "calls": e.count} for e in ops[:top]]}
