"""Trainer: a plain PyTorch loop wrapped by Accelerate (paper Sec. 3.4, App. C.1, C.5).

- Data (C.5): random contiguous windows of ``block_size + 1`` tokens from a split's token
  stream (inputs and targets shifted by one); they cut across examples and step boundaries.
  The offsets of optimizer step ``s`` are one draw from ``(seed, s)``; process ``r`` takes
  slice ``r`` of it, so processes see distinct windows, the data does not depend on the number
  of processes or on the micro-batch size, and resuming needs only the step counter.
- One epoch = tokens in the split / (batch_size x block_size) optimizer steps.
- Optimizer and schedule (C.1): AdamW; the first half of the steps (= epochs) warms up
  linearly over 10% from 1e-4 to 1e-3 then follows a cosine back to 1e-4; the second half
  does the same with every LR x0.1 (1e-5 -> 1e-4 -> 1e-5). See :func:`.common.lr_at`.
- Accelerate: devices, autocast on CUDA (bf16, or fp16 below compute capability 8.0; fp32 on
  CPUs), gradient accumulation
  (``batch_size`` sequences per optimizer step over all processes, in micro-batches), DDP via
  ``accelerate launch``, ``save_state``/``load_state`` (model, optimizer, scheduler, RNG).
- A run folder ``RUN`` holds ``run.json`` (resolved config, git commit, library versions,
  device, seed), ``log.jsonl`` (one JSON object per log step / epoch), ``state/`` (the
  Accelerate state plus ``trainer.json`` with the step counter) and the latest weights as
  ``model.safetensors`` + ``config.json`` (:func:`tinytrace.model.load_checkpoint`).
- Checkpoints: at each epoch end, every ``save_every`` steps, every ``save_every_minutes`` of
  wall clock (a crash or a kill loses at most that) and at the stop; each replaces ``state/``,
  so only the latest resumable state is kept. Each finished epoch also keeps its weights as
  ``epoch-<k>/model.safetensors`` + ``config.json`` (``keep_epoch_weights``).
  SIGINT or SIGTERM stops the run at the next step boundary with the state saved there
  (:mod:`tinytrace.interrupt`); ``resume`` continues it as if nothing had happened.

Weight decay, betas and gradient clipping are not stated for pre-training in the paper; the
defaults (0.1, (0.9, 0.95), 1.0) are the paper's SFT values (App. G.1) and nanoGPT's.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from tinytrace.data import token_stream
from tinytrace.interrupt import Interrupted, StopRequest, stop_requests
from tinytrace.model import GPT, ModelConfig, save_checkpoint
from tinytrace.presets import ConfigDict, Presets
from tinytrace.provenance import compile_pays, environment

from .common import (
    OPTIMIZERS,
    STATE_DIR,
    TRAINER_FILE,
    append_jsonl,
    batch_plan,
    check_optimizer_fields,
    deterministic_algorithms,
    find_state,
    lm_loss,
    lr_schedulers,
    make_accelerator,
    make_optimizers,
    optimizer_step,
    poll,
    quiet_tied_weights,
    save_state,
    tensor_lrs,
)
from .common import validation_loss as _validation_loss

RUN_FILE = "run.json"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Fields that define the trajectory: a resumed run must use the same values.
FIXED_FIELDS = ("epochs", "batch_size", "block_size", "lr_peak", "lr_min", "warmup_frac",
                "phase1_frac", "phase2_scale", "weight_decay", "betas", "eps", "grad_clip", "seed",
                "optimizer", "muon_lr", "muon_momentum", "state_loss_weight")


# --- configuration -----------------------------------------------------------------------------
@dataclass
class TrainConfig(ConfigDict):
    """Optimizer, schedule, batch and run control. ``batch_size`` counts sequences per optimizer
    step over all processes; ``micro_batch_size`` is per process and forward pass (None: the
    whole per-process share at once). ``max_steps`` stops early without changing the schedule,
    which always spans ``epochs``."""

    name: str = "paper"
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 512
    micro_batch_size: int | None = 64
    block_size: int | None = None  # training window; None = the model's context
    lr_peak: float = 1e-3
    lr_min: float = 1e-4
    warmup_frac: float = 0.1  # of each phase
    phase1_frac: float = 0.5  # phase 1 = first half of the steps; 1.0 = a single phase
    phase2_scale: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    save_every: int = 0  # optimizer steps between checkpoints (0: only at epoch ends and stop)
    save_every_minutes: float = 10.0  # wall clock between checkpoints (0: off); not in FIXED_FIELDS
    keep_epoch_weights: bool = True  # each epoch's weights in epoch-<k>/; not in FIXED_FIELDS
    log_every: int = 10
    val_windows: int = 64  # validation windows at each epoch end (0: no validation loss)
    compile: bool = False  # skipped where it does not pay (tinytrace.provenance.compile_pays)
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune" or
    # "max-autotune-no-cudagraphs"; `tinytrace bench train --compile-mode` measures them
    compile_mode: str = "default"
    # run the optimizers' steps through torch.compile too (where `compile` pays); measured by
    # `tinytrace bench train --compile-optimizer`
    compile_optimizer: bool = False
    mixed_precision: str = "auto"  # auto: tinytrace.provenance.mixed_precision (bf16/fp16/fp32)
    data_on_device: bool = True  # copy the whole token stream to the GPU (uint8)
    # "adamw" (the paper's, App. C.1) or "muon": torch.optim.Muon on the 2-D weights of the
    # blocks' Linear layers, AdamW (above) on embeddings, gains, position tables and the head.
    # Not in the paper; a faster-learning alternative.
    optimizer: str = "adamw"
    muon_lr: float | None = None  # peak LR of the Muon group; None = lr_peak (RMS matched to AdamW)
    muon_momentum: float = 0.95
    # 1.0: the paper's mean cross-entropy. Above 1: the targets in each state list (the values
    # the execution produces, :func:`.common.state_targets`) weigh that much more; a
    # faster-learning alternative for small compute, not in the paper.
    state_loss_weight: float = 1.0
    # torch.use_deterministic_algorithms during the run: bit-identical reruns. None = on a CPU
    # (the compiled backward's scatter-adds otherwise race between threads; measured at no cost)
    # and off on GPUs, where it slows kernels and needs CUBLAS_WORKSPACE_CONFIG=:4096:8.
    deterministic: bool | None = None

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for k in ("epochs", "batch_size", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if not 0 <= self.warmup_frac < 1 or not 0 < self.phase1_frac <= 1:
            raise ValueError("need 0 <= warmup_frac < 1 and 0 < phase1_frac <= 1")
        if self.lr_peak <= 0 or self.lr_min < 0 or self.lr_min > self.lr_peak:
            raise ValueError(f"need 0 <= lr_min <= lr_peak, 0 < lr_peak; got {self.lr_min}, {self.lr_peak}")
        if self.save_every < 0 or self.save_every_minutes < 0 or self.val_windows < 0:
            raise ValueError("save_every, save_every_minutes and val_windows must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.muon_lr is not None and self.muon_lr <= 0:
            raise ValueError(f"muon_lr must be > 0, got {self.muon_lr}")
        if self.state_loss_weight <= 0:
            raise ValueError(f"state_loss_weight must be > 0, got {self.state_loss_weight}")
        check_optimizer_fields(self)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, "
                             f"got {self.compile_mode!r}")
        if self.deterministic is not None and not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic must be None, true or false, got {self.deterministic!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")

    @property
    def lr_schedule(self) -> dict:
        """The arguments of :func:`.common.lr_at` besides the step and the number of steps."""
        return dict(lr_peak=self.lr_peak, lr_min=self.lr_min, warmup_frac=self.warmup_frac,
                    phase1_frac=self.phase1_frac, phase2_scale=self.phase2_scale)


_GPU_MUON = TrainConfig(name="gpu-muon", epochs=1, batch_size=128, micro_batch_size=128,
                        lr_peak=3e-3, lr_min=3e-4, warmup_frac=0.05, phase1_frac=1.0,
                        compile=True, optimizer="muon", muon_lr=6e-3)
TRAIN_PRESETS: Presets[TrainConfig] = Presets("train preset", {
    # App. C.1 / Sec. 3.4: 512 x 512-token windows per step, 4 epochs, two-phase schedule.
    "paper": TrainConfig(),
    # A laptop run of a small model: same schedule shape, small batches.
    "cpu": TrainConfig(name="cpu", batch_size=32, micro_batch_size=None, block_size=256,
                       log_every=10, val_windows=32),
    # A recipe for one H100-class GPU (the `gpu` scale): one cosine phase at twice the paper's
    # peak lr, short warmup, compiled, 256-window micro-batches. Not in the paper.
    "fast": TrainConfig(name="fast", epochs=1, micro_batch_size=256, lr_peak=2e-3,
                        warmup_frac=0.05, phase1_frac=1.0, compile=True),
    # The `gpu` scale's first recipe (not in the paper): `fast` with 4x more optimizer steps for
    # the same tokens (batch 128 x 512) and Muon on the hidden matrices at twice AdamW's peak lr;
    # one epoch of 600k snippets gave 93.8% ID EM where `fast` gave 0/16 (notes/issue15-learning.md).
    "gpu-muon": _GPU_MUON,
    # `gpu-muon` with the state lists weighted 3x in the loss, the lever that took the `cpu`
    # scale past 95% (not in the paper); the `gpu` scale's recipe, to be measured on a GPU.
    "gpu-muon-state": replace(_GPU_MUON, name="gpu-muon-state", state_loss_weight=3.0),
    # Smoke tests: a few tiny steps.
    "smoke": TrainConfig(name="smoke", epochs=1, batch_size=4, micro_batch_size=None,
                         block_size=64, log_every=1, val_windows=4),
})


def get_train_config(name: str = "paper", **overrides) -> TrainConfig:
    return TRAIN_PRESETS.get(name, **overrides)


# --- data --------------------------------------------------------------------------------------
def steps_per_epoch(n_tokens: int, batch_size: int, block_size: int) -> int:
    """Optimizer steps per epoch: tokens in the split / (batch_size x block_size), at least 1."""
    return max(1, n_tokens // (batch_size * block_size))


class WindowSampler:
    """Random contiguous ``block_size + 1``-token windows of a uint8 token stream (App. C.5).

    The global batch of step ``s`` is ``offsets(s)``, a function of ``(seed, s)`` only; process
    ``rank`` of ``world`` uses its ``rank``-th slice (:meth:`local_offsets`).
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0,
                 device: torch.device | str = "cpu", on_device: bool = True):
        if len(tokens) < block_size + 1:
            raise ValueError(f"token stream of {len(tokens)} tokens is shorter than one window "
                             f"({block_size + 1} tokens)")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.n_tokens = len(tokens)
        self.max_offset = self.n_tokens - block_size - 1  # inclusive
        self.device = torch.device(device)
        data = torch.from_numpy(np.array(tokens, dtype=np.uint8))  # RAM copy of the memmap
        if self.device.type == "cuda":
            # One upload; windows are then gathered on the GPU without host round trips.
            data = data.to(self.device) if on_device else data.pin_memory()
        self.data = data
        self._ar = torch.arange(block_size + 1, device=data.device)

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.max_offset + 1, size=self.batch_size, dtype=np.int64)

    def local_offsets(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        per = self.batch_size // world
        return self.offsets(step)[rank * per:(rank + 1) * per]

    def windows(self, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, block_size) int64 on the sampler's device; y is x shifted by one."""
        off = torch.from_numpy(np.ascontiguousarray(offsets))
        if self.data.is_cuda:  # pinned: the upload is truly asynchronous (no stream sync)
            off = off.pin_memory()
        off = off.to(self.data.device, non_blocking=True)
        w = self.data[off[:, None] + self._ar]  # (B, T+1) uint8
        if w.device != self.device:
            w = w.to(self.device, non_blocking=True)
        w = w.long()
        return w[:, :-1], w[:, 1:]


def validation_loss(model, sampler: WindowSampler, n_windows: int, micro: int, accelerator) -> float:
    """Mean loss over ``n_windows`` evenly spaced windows of the stream, split over processes."""
    offsets = np.linspace(0, sampler.max_offset, n_windows).astype(np.int64)
    mine = offsets[accelerator.process_index::accelerator.num_processes]
    batches = (sampler.windows(mine[i:i + micro]) for i in range(0, len(mine), micro))
    return _validation_loss(model, batches, accelerator, _window_loss)


def _window_loss(model, x, y):
    _, loss = model(x, y)
    return loss.float() * len(x), len(x)


# --- the run's steps ---------------------------------------------------------------------------
def check_resume(out: Path, tc: TrainConfig, mc: ModelConfig, train_tokens: int,
                 resume: bool) -> tuple[Path | None, dict | None]:
    """(state folder, saved run record) to continue from, or (None, None) for a new run.

    A run in ``out`` is an error without ``resume``. Resuming reads ``run.json`` strictly
    (:func:`read_run`) and refuses a model field, a trajectory field (:data:`FIXED_FIELDS`) or
    a train split that differs from the saved run's, naming each with both values."""
    state_dir = find_state(out)
    if state_dir is None:
        return None, None
    if not resume:
        raise ValueError(f"{out} already holds a run; pass --resume or choose another --out")
    saved_tc, saved_mc, saved = read_run(out)
    pairs = [(k, getattr(tc, k), getattr(saved_tc, k)) for k in FIXED_FIELDS]
    saved_model = saved_mc.to_dict()
    pairs += [(f"model {k}", v, saved_model[k]) for k, v in mc.to_dict().items()]
    bad = [f"{k} {new!r} (saved {old!r})" for k, new, old in pairs if new != old]
    if bad:
        raise ValueError(f"cannot resume {out}: differs from the saved run in {', '.join(bad)}")
    if saved["data"]["train_tokens"] != train_tokens:
        raise ValueError(f"cannot resume {out}: the train split changed "
                         f"({saved['data']['train_tokens']} -> {train_tokens} tokens)")
    return state_dir, saved


def read_run(out) -> tuple[TrainConfig, ModelConfig, dict]:
    """The train and model configs of the run record ``out/run.json``, and the record itself.
    Each config is read with its strict ``from_dict``: an unknown field is an error (a record
    written by other code is not this code's config); a field it predates takes its default."""
    path = Path(out) / RUN_FILE
    try:
        saved = json.loads(path.read_text())
        return TrainConfig.from_dict(saved["train"]), ModelConfig.from_dict(saved["model"]), saved
    except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"cannot resume {out}: {path} does not hold this code's configs "
                         f"({type(e).__name__}: {e})") from None


@dataclass
class _Run:
    """A training run's parts and counters, passed to the loop's steps."""

    tc: TrainConfig
    out: Path
    acc: Accelerator
    model: torch.nn.Module  # as prepared by Accelerate (DDP under several processes)
    fwd: Callable  # the model, or its torch.compile'd forward
    optimizers: list
    schedulers: list
    sampler: WindowSampler
    val_sampler: WindowSampler | None
    plan: dict  # steps_per_epoch, total_steps, stop_step, batch split, block_size
    data: dict  # dataset config name and train tokens, stored with every checkpoint
    compiled: bool = False  # the first step runs compiled (falls back to eager if it fails)
    step: int = 0
    tokens: int = 0
    elapsed0: float = 0.0  # seconds trained before this process (resumed runs)
    t0: float = 0.0
    t_log: float = 0.0  # time and step of the last log record (tokens/s between them)
    step_log: int = 0
    loss_sum: torch.Tensor | None = None  # micro-batch losses since the last log record
    n_micro: int = 0
    last: dict = field(default_factory=lambda: {"loss": None, "val_loss": None})
    stop: StopRequest = field(default_factory=StopRequest)
    saved_step: int = -1  # step and monotonic time of the last checkpoint
    t_saved: float = 0.0

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def log(self, record: dict) -> None:
        if self.main:
            append_jsonl(self.out / "log.jsonl", record)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0


def _setup(tc: TrainConfig, mc: ModelConfig, acc: Accelerator, out: Path, stream, block: int,
           data_dir, config_name: str) -> _Run:
    """Batch plan, samplers, model, optimizers and schedules of a new run, prepared by ``acc``."""
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    per, micro, accum = batch_plan(tc.batch_size, tc.micro_batch_size, acc.num_processes)
    acc.gradient_accumulation_steps = accum
    spe = steps_per_epoch(len(stream), tc.batch_size, block)
    total = tc.epochs * spe
    stop = total if tc.max_steps is None else min(total, tc.max_steps)
    sampler = WindowSampler(stream, block, tc.batch_size, tc.seed, acc.device, tc.data_on_device)
    val_sampler = None
    if tc.val_windows:
        try:
            val_sampler = WindowSampler(token_stream(data_dir, config_name, "validation"), block,
                                        tc.val_windows, tc.seed, acc.device, tc.data_on_device)
        except (FileNotFoundError, ValueError):  # no validation split, or one shorter than a window
            val_sampler = None
    set_seed(tc.seed)
    model = GPT(mc)
    optimizers = make_optimizers(model, acc.device, tc.lr_peak, tc.betas, tc.eps, tc.weight_decay,
                                 tc.optimizer, tc.muon_lr, tc.muon_momentum,
                                 compile=tc.compile_optimizer and compile_pays(acc.device))
    schedulers = lr_schedulers(optimizers, total, tc.lr_schedule)
    model, *optimizers = acc.prepare(model, *optimizers)
    for sch in schedulers:
        acc.register_for_checkpointing(sch)
    plan = {"steps_per_epoch": spe, "total_steps": total, "stop_step": stop, "block_size": block,
            "tokens_per_step": tc.batch_size * block, "per_process_batch": per,
            "micro_batch_size": micro, "accumulation_steps": accum}
    compiled = tc.compile and compile_pays(acc.device)
    return _Run(tc=tc, out=out, acc=acc, model=model,
                fwd=compiled_forward(model, tc.compile_mode) if compiled else model,
                optimizers=optimizers,
                schedulers=schedulers, sampler=sampler, val_sampler=val_sampler, plan=plan,
                data={"config": config_name, "train_tokens": len(stream)}, compiled=compiled)


def compiled_forward(model, mode: str = "default"):
    """``torch.compile(model)`` in ``mode`` (:data:`COMPILE_MODES`)."""
    return torch.compile(model, mode=None if mode == "default" else mode)


def _load_state(r: _Run, state_dir: Path) -> None:
    tensors = isinstance(r.optimizers[0].param_groups[0]["lr"], torch.Tensor)  # compiled steps
    r.acc.load_state(str(state_dir))
    if tensors:
        tensor_lrs(r.optimizers)  # load_state restored the rates as saved: floats
    trainer = json.loads((state_dir / TRAINER_FILE).read_text())
    r.step, r.tokens, r.elapsed0 = trainer["step"], trainer["tokens"], trainer["elapsed_s"]


def _write_run_record(r: _Run, mc: ModelConfig, saved: dict | None, data_dir, n_params: int,
                      env: dict) -> None:
    """``run.json`` (a new run's record, or the saved one with this resume appended) and the
    start/resume line of ``log.jsonl``; Accelerate's trackers get the configs."""
    tc, now = r.tc, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if r.main:
        r.out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            run = {"train": tc.to_dict(), "model": mc.to_dict(), "params": n_params,
                   "data": {"dir": str(Path(data_dir).resolve()), **r.data},
                   "plan": r.plan, "env": env, "seed": tc.seed, "started": now, "resumes": []}
        else:
            run = saved
            run["resumes"].append({"step": r.step, "time": now, "max_steps": tc.max_steps,
                                   "env": env, "plan": r.plan})
        (r.out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    r.log({"event": "resume" if saved else "start", "step": r.step, "git_commit": env["git_commit"],
           "device": env["device"], "num_processes": r.acc.num_processes, "seed": tc.seed})
    if r.acc.log_with:
        r.acc.init_trackers("tinytrace", config={
            **{f"train/{k}": v for k, v in tc.to_dict().items() if not isinstance(v, (list, tuple))},
            **{f"model/{k}": v for k, v in mc.to_dict().items() if isinstance(v, (int, float, str, bool))}})


def _save(r: _Run, epoch: float) -> None:
    """Checkpoint: the Accelerate state with ``trainer.json`` (:func:`.common.save_state`),
    and the weights as ``model.safetensors`` + ``config.json``."""
    # The data cursor is the step: step s reads the windows drawn from (seed, s).
    save_state(r.acc, r.out, {
        "step": r.step, "data_cursor": {"seed": r.tc.seed, "next_step": r.step}, "epoch": epoch,
        "tokens": r.tokens, "elapsed_s": r.elapsed(), "seed": r.tc.seed,
        "steps_per_epoch": r.plan["steps_per_epoch"], "total_steps": r.plan["total_steps"]})
    if r.main:
        save_checkpoint(r.acc.unwrap_model(r.model), r.out, extra={
            "train": r.tc.to_dict(), "step": r.step, "epoch": epoch, "data": r.data})
    r.acc.wait_for_everyone()
    r.saved_step, r.t_saved = r.step, time.monotonic()
    if r.step_log == r.step:
        r.t_log = time.perf_counter()  # tokens/s measures training, not saving


def _optimization_step(r: _Run) -> None:
    """One optimizer step on step ``r.step``'s windows, the schedules' step, the counters.

    A compiled run's first step falls back to eager training if the compiler fails: the
    gradients and accelerate's micro-batch counter are reset, the step is redone eagerly and
    the failure goes to ``log.jsonl``."""
    acc, p = r.acc, r.plan
    offs = r.sampler.local_offsets(r.step, acc.process_index, acc.num_processes)
    batches = [r.sampler.windows(offs[i:i + p["micro_batch_size"]])
               for i in range(0, p["per_process_batch"], p["micro_batch_size"])]
    acc_step = acc.step

    def run(fwd):
        return optimizer_step(r.model, r.optimizers, acc, batches,
                              lambda x, y: lm_loss(fwd, x, y, r.tc.state_loss_weight),
                              r.tc.grad_clip)

    if r.compiled:
        r.compiled = False
        try:
            loss_sum = run(r.fwd)
        except Exception as e:  # a compiler failure must not cost the run: train eagerly
            logging.getLogger(__name__).warning("torch.compile failed (%s: %s); training eagerly",
                                                type(e).__name__, e)
            for opt in r.optimizers:
                opt.zero_grad(set_to_none=True)
            acc.step = acc_step  # accelerate's micro-batch counter: restart this step
            r.fwd = r.model
            loss_sum = run(r.fwd)
            r.log({"event": "compile_failed", "step": r.step, "error": f"{type(e).__name__}: {e}"[:500]})
    else:
        loss_sum = run(r.fwd)
    for sch in r.schedulers:
        sch.step()
    r.loss_sum = loss_sum if r.loss_sum is None else r.loss_sum + loss_sum
    r.n_micro += p["accumulation_steps"]
    r.step += 1
    r.tokens += p["tokens_per_step"]


def _log_step(r: _Run, lr: float, pbar) -> None:
    """The step record: mean loss since the last record (the loop's only host sync), tokens/s."""
    loss = r.acc.reduce(r.loss_sum / r.n_micro, "mean").item()
    now = time.perf_counter()
    tps = (r.step - r.step_log) * r.plan["tokens_per_step"] / max(now - r.t_log, 1e-9)
    rec = {"event": "step", "step": r.step, "epoch": r.step / r.plan["steps_per_epoch"],
           "loss": loss, "lr": lr, "tokens": r.tokens, "tokens_per_s": tps,
           "elapsed_s": r.elapsed0 + now - r.t0}
    r.last["loss"] = loss
    r.log(rec)
    if r.acc.log_with:
        r.acc.log({k: rec[k] for k in ("loss", "lr", "tokens_per_s", "epoch")}, step=r.step)
    pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
    r.t_log, r.step_log, r.loss_sum, r.n_micro = now, r.step, None, 0


def _end_epoch(r: _Run, callbacks: Iterable[Callable]) -> None:
    """Validation loss, checkpoint, callbacks, then the epoch record."""
    acc, epoch = r.acc, r.step // r.plan["steps_per_epoch"]
    rec = {"event": "epoch", "epoch": epoch, "step": r.step, "loss": r.last["loss"]}
    if r.val_sampler is not None:
        rec["val_loss"] = r.last["val_loss"] = validation_loss(
            acc.unwrap_model(r.model), r.val_sampler, r.tc.val_windows, r.plan["micro_batch_size"], acc)
    _save(r, float(epoch))
    raw = acc.unwrap_model(r.model)
    if r.main and r.tc.keep_epoch_weights:  # weights only: the resumable state is the latest
        save_checkpoint(raw, r.out / f"epoch-{epoch}", extra={
            "train": r.tc.to_dict(), "step": r.step, "epoch": float(epoch), "data": r.data})
    raw.eval()
    for cb in callbacks:
        extra = cb(epoch, raw, acc, rec)
        if isinstance(extra, dict):
            rec.update(extra)
    r.model.train()
    r.t_log = time.perf_counter()  # tokens/s measures training, not evaluation or saving
    rec["elapsed_s"] = r.elapsed0 + r.t_log - r.t0
    r.log(rec)
    if acc.log_with:
        acc.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=r.step)


def _interrupt(r: _Run, signum: int) -> None:
    """Save the state of the step just finished (unless it is saved already) and stop."""
    if r.saved_step != r.step:
        _save(r, r.step / r.plan["steps_per_epoch"])
    r.log({"event": "interrupted", "signal": signum, "step": r.step,
           "elapsed_s": r.elapsed()})
    raise Interrupted(signum, f"the full state of step {r.step} of {r.plan['stop_step']} "
                              f"(model, optimizers, schedules, RNG, data cursor) is in "
                              f"{r.out / STATE_DIR}")


# --- the loop ----------------------------------------------------------------------------------
def train(train_config: TrainConfig, model_config: ModelConfig, data_dir, config_name: str, out_dir,
          resume: bool = False, callbacks: Iterable[Callable] = (), accelerator=None,
          log_with=None, progress: bool = True) -> dict:
    """Train a :class:`tinytrace.model.GPT` on ``data_dir/config_name`` train tokens into ``out_dir``.

    ``callbacks``: each is called as ``cb(epoch, model, accelerator, record)`` on every process
    after each epoch's checkpoint (``model`` is the unwrapped model in eval mode, ``epoch``
    counts from 1); a returned dict is merged into the epoch record of ``log.jsonl``.
    ``resume``: continue from ``out_dir/state`` if it exists (else start fresh); without it an
    existing state is an error. Returns a summary dict. SIGINT/SIGTERM during the loop save
    the state at the next step boundary and raise :class:`tinytrace.interrupt.Interrupted`.
    """
    tc, mc, out = train_config, model_config, Path(out_dir)
    quiet_tied_weights()
    block = tc.block_size or mc.block_size
    if block > mc.block_size:
        raise ValueError(f"block_size {block} exceeds the model's context {mc.block_size}")
    stream = token_stream(data_dir, config_name, "train")
    state_dir, saved = check_resume(out, tc, mc, len(stream), resume)
    acc = accelerator or make_accelerator(tc, log_with, out)
    with deterministic_algorithms(tc.deterministic, acc.device):
        r = _setup(tc, mc, acc, out, stream, block, data_dir, config_name)
        if state_dir is not None:
            _load_state(r, state_dir)
        start_step, spe, stop = r.step, r.plan["steps_per_epoch"], r.plan["stop_step"]
        env = environment(acc)
        n_params = acc.unwrap_model(r.model).num_params()
        # signals are the loop's from before the run record's "start" event on: a launcher or test
        # that waits for that event to stop the run always reaches the loop's handler
        with stop_requests() as r.stop:
            _write_run_record(r, mc, saved, data_dir, n_params, env)
            pbar = tqdm(total=stop, initial=r.step, disable=not (progress and acc.is_local_main_process),
                        desc="train", dynamic_ncols=True)
            r.model.train()
            r.t0 = r.t_log = time.perf_counter()
            r.step_log, r.t_saved = r.step, time.monotonic()
            try:
                while r.step < stop:
                    lr = float(r.schedulers[0].get_last_lr()[0])  # this step's (a tensor if compiled)
                    _optimization_step(r)
                    pbar.update(1)
                    if r.step % tc.log_every == 0 or r.step == stop or r.step % spe == 0:
                        _log_step(r, lr, pbar)
                    if r.step % spe == 0:
                        _end_epoch(r, callbacks)
                    elif (tc.save_every and r.step % tc.save_every == 0) or r.step == stop:
                        _save(r, r.step / spe)
                    signum, due = poll(acc, r.stop, r.t_saved, tc.save_every_minutes,
                                       agree=r.step % tc.log_every == 0)
                    if signum:
                        _interrupt(r, signum)
                    if due and r.saved_step != r.step:
                        _save(r, r.step / spe)
            finally:
                pbar.close()
    seconds = time.perf_counter() - r.t0
    if r.step == start_step and not (out / "model.safetensors").exists():
        _save(r, r.step / spe)  # nothing trained (e.g. --max-steps 0): still leave loadable weights
    summary = {"out_dir": str(out), "step": r.step, "start_step": start_step,
               "total_steps": r.plan["total_steps"], "steps_per_epoch": spe, "epoch": r.step / spe,
               "loss": r.last["loss"], "val_loss": r.last["val_loss"], "tokens": r.tokens,
               "params": n_params, "seconds": seconds,
               "tokens_per_s": (r.step - start_step) * r.plan["tokens_per_step"] / max(seconds, 1e-9),
               "num_processes": acc.num_processes, "device": env["device"]}
    r.log({"event": "end", **summary})
    if acc.log_with:
        acc.end_training()
    return summary
