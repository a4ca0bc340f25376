"""Training throughput: tokens/s and MFU of the real optimizer step on random tokens."""
from __future__ import annotations

import time

import torch

from tinytrace.model import GPT, get_model_config
from tinytrace.provenance import device_name

from .common import (
    batch_plan,
    check_device,
    lm_loss,
    make_accelerator,
    make_optimizers,
    optimizer_step,
)
from .loop import compiled_forward, get_train_config


def peak_flops(name: str) -> float | None:
    """Peak dense tensor-core FLOP/s in the dtype training autocasts to there (bf16; fp16 on a
    T4, which has no bf16), used for MFU; None where we do not claim one (CPUs)."""
    if "H100" in name or "H200" in name:
        return 798e12  # an achievable dense bf16 matmul peak of an H100 SXM (989e12 nominal)
    if "A100" in name:
        return 312e12
    if "T4" in name:
        return 65e12  # nominal fp16 tensor-core peak
    return None


def bench_train(model: str = "tiny", steps: int = 10, batch_size: int = 8,
                micro_batch_size: int | None = None, compile: bool = False,
                device: str | None = None, warmup: int = 2, seed: int = 0,
                preset: str = "paper", compile_mode: str = "default",
                compile_optimizer: bool = False, optimizer_repeats: int = 5,
                model_overrides: dict | None = None) -> dict:
    """Tokens/s and MFU of the training step of train preset ``preset`` (its optimizer, loss
    and precision; the batch, micro-batch and compile settings given here) on synthetic random
    tokens (no dataset), after ``warmup`` untimed steps; ``model_overrides``: ModelConfig
    fields over the preset ``model``. Then, apart from that timing, each
    optimizer's step alone (``optimizer_ms``, mean of ``optimizer_repeats`` on one set of
    gradients): what share of a step the optimizers take, the room a compiled step can win."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_device(device)
    mc = get_model_config(model, **(model_overrides or {}))
    tc = get_train_config(preset, batch_size=batch_size, micro_batch_size=micro_batch_size,
                          compile=compile, compile_mode=compile_mode,
                          compile_optimizer=compile_optimizer, seed=seed)
    acc = make_accelerator(tc, cpu=device == "cpu")
    per, micro, accum = batch_plan(batch_size, micro_batch_size, acc.num_processes)
    acc.gradient_accumulation_steps = accum
    torch.manual_seed(seed)
    net = GPT(mc)
    opts = make_optimizers(net, acc.device, tc.lr_peak, tc.betas, tc.eps, tc.weight_decay,
                           tc.optimizer, tc.muon_lr, tc.muon_momentum, compile=compile_optimizer)
    net, *opts = acc.prepare(net, *opts)
    fwd = compiled_forward(net, tc.compile_mode) if compile else net
    T = mc.block_size
    gen = torch.Generator(device=acc.device).manual_seed(seed)
    data = [torch.randint(0, mc.vocab_size, (micro, T + 1), device=acc.device, generator=gen)
            for _ in range(accum)]
    batches = [(d[:, :-1], d[:, 1:]) for d in data]

    graphs = compile and compile_mode in ("reduce-overhead", "max-autotune")  # CUDA graphs

    def loss_fn(x, y):
        return lm_loss(fwd, x, y, tc.state_loss_weight)

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier outputs go
        return optimizer_step(net, opts, acc, batches, loss_fn, tc.grad_clip)

    def sync():
        if acc.device.type == "cuda":
            torch.cuda.synchronize(acc.device)

    t_warmup = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t_warmup = time.perf_counter() - t_warmup
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    # the loss before another forward: under CUDA graphs that forward overwrites it
    loss = float(loss.item()) / accum
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
    opt_ms = _optimizer_ms(opts, lambda: loss_fn(*batches[0])[0], sync, optimizer_repeats)
    raw = acc.unwrap_model(net)
    tokens_per_s = steps * batch_size * T / dt
    fpt = raw.flops_per_token()
    name = device_name(acc.device)
    peak = peak_flops(name) if acc.device.type == "cuda" else None
    flops = fpt * tokens_per_s
    return {"model": model, "model_overrides": model_overrides or {}, "params": raw.num_params(),
            "flops_per_token": fpt,
            "tokens_per_s": round(tokens_per_s, 1), "achieved_tflops": round(flops / 1e12, 4),
            "peak_flops": peak, "mfu": None if peak is None else round(flops / peak, 4),
            "device": name, "device_type": acc.device.type, "mixed_precision": acc.mixed_precision,
            "preset": preset, "optimizer": tc.optimizer,
            "state_loss_weight": tc.state_loss_weight, "compile": compile,
            "compile_mode": tc.compile_mode if compile else None, "steps": steps, "warmup_steps": warmup,
            "warmup_s": round(t_warmup, 3), "seconds": round(dt, 3), "batch_size": batch_size,
            "micro_batch_size": micro, "accumulation_steps": accum, "block_size": T,
            "step_ms": round(1e3 * dt / steps, 2), "optimizer_ms": opt_ms,
            "compile_optimizer": compile_optimizer, "loss": loss,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _optimizer_ms(opts, loss, sync, repeats: int) -> dict[str, float]:
    """Milliseconds of each optimizer's step alone, by class name: one backward of ``loss()``
    (the timed step's loss, so a compiled model runs the graph it has) for gradients, then
    ``repeats`` timed steps of each after an untimed one (a compiled step compiles on its first
    call with gradients present)."""
    if repeats < 1:
        return {}
    loss().backward()
    times = {}
    for opt in opts:
        inner = getattr(opt, "optimizer", opt)  # accelerate's wrapper steps only on sync steps
        inner.step()
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            inner.step()
        sync()
        times[type(inner).__name__] = round(1e3 * (time.perf_counter() - t) / repeats, 3)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    return times
