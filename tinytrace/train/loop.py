"""Trainer: a plain PyTorch loop wrapped by Accelerate (paper Sec. 3.4, App. C.1, C.5).

- Data (C.5): random contiguous windows of ``block_size + 1`` tokens from a split's token
  stream (inputs and targets shifted by one); they cut across examples and step boundaries.
  The offsets of optimizer step ``s`` are one draw from ``(seed, s)``; process ``r`` takes
  slice ``r`` of it, so processes see distinct windows, the data does not depend on the number
  of processes or on the micro-batch size, and resuming needs only the step counter.
- One epoch = tokens in the split / (batch_size x block_size) optimizer steps.
- Optimizer and schedule (C.1): AdamW; the first half of the steps (= epochs) warms up
  linearly over 10% from 1e-4 to 1e-3 then follows a cosine back to 1e-4; the second half
  does the same with every LR x0.1 (1e-5 -> 1e-4 -> 1e-5). See :func:`lr_at`.
- Accelerate: devices, bf16 autocast on CUDA (fp32 on CPU), gradient accumulation
  (``batch_size`` sequences per optimizer step over all processes, in micro-batches), DDP via
  ``accelerate launch``, ``save_state``/``load_state`` (model, optimizer, scheduler, RNG).
- A run folder ``RUN`` holds ``run.json`` (resolved config, git commit, library versions,
  device, seed), ``log.jsonl`` (one JSON object per log step / epoch), ``state/`` (the
  Accelerate state plus ``trainer.json`` with the step counter) and the latest weights as
  ``model.safetensors`` + ``config.json`` (:func:`tinytrace.model.load_checkpoint`).

Weight decay, betas and gradient clipping are not stated for pre-training in the paper; the
defaults (0.1, (0.9, 0.95), 1.0) are the paper's SFT values (App. G.1) and nanoGPT's.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from tinytrace.presets import ConfigDict, Presets
from tinytrace.provenance import device_name, environment

STATE_DIR = "state"
TRAINER_FILE = "trainer.json"
# Fields that define the trajectory: a resumed run must use the same values.
FIXED_FIELDS = ("epochs", "batch_size", "block_size", "lr_peak", "lr_min", "warmup_frac",
                "phase1_frac", "phase2_scale", "weight_decay", "betas", "eps", "grad_clip", "seed",
                "optimizer", "muon_lr", "muon_momentum")
OPTIMIZERS = ("adamw", "muon")


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
    log_every: int = 10
    val_windows: int = 64  # validation windows at each epoch end (0: no validation loss)
    compile: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, no (fp32) elsewhere
    data_on_device: bool = True  # copy the whole token stream to the GPU (uint8)
    # "adamw" (the paper's, App. C.1) or "muon": torch.optim.Muon on the 2-D weights of the
    # blocks' Linear layers, AdamW (above) on embeddings, gains, position tables and the head.
    # Not in the paper; a faster-learning alternative.
    optimizer: str = "adamw"
    muon_lr: float | None = None  # peak LR of the Muon group; None = lr_peak (RMS matched to AdamW)
    muon_momentum: float = 0.95

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
        if self.save_every < 0 or self.val_windows < 0:
            raise ValueError("save_every and val_windows must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.muon_lr is not None and self.muon_lr <= 0:
            raise ValueError(f"muon_lr must be > 0, got {self.muon_lr}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")


TRAIN_PRESETS: Presets[TrainConfig] = Presets("train preset", {
    # App. C.1 / Sec. 3.4: 512 x 512-token windows per step, 4 epochs, two-phase schedule.
    "paper": TrainConfig(),
    # A laptop run of a small model: same schedule shape, small batches.
    "cpu": TrainConfig(name="cpu", batch_size=32, micro_batch_size=None, block_size=256,
                       log_every=10, val_windows=32),
    # Issue 6's `fast` recipe for one H100 (the `gpu` scale): one cosine phase at twice the
    # paper's peak lr, short warmup, compiled, 256-window micro-batches. Not in the paper.
    "fast": TrainConfig(name="fast", epochs=1, micro_batch_size=256, lr_peak=2e-3,
                        warmup_frac=0.05, phase1_frac=1.0, compile=True),
    # Smoke tests: a few tiny steps.
    "smoke": TrainConfig(name="smoke", epochs=1, batch_size=4, micro_batch_size=None,
                         block_size=64, log_every=1, val_windows=4),
})


def get_train_config(name: str = "paper", **overrides) -> TrainConfig:
    return TRAIN_PRESETS.get(name, **overrides)


# --- schedule ----------------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, lr_peak: float = 1e-3, lr_min: float = 1e-4,
          warmup_frac: float = 0.1, phase1_frac: float = 0.5, phase2_scale: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total_steps`` (App. C.1).

    Each phase: linear warmup over ``warmup_frac`` of its steps from ``lr_min`` to ``lr_peak``,
    then a cosine back to ``lr_min`` at the phase's end; phase 2 is scaled by ``phase2_scale``.
    """
    total_steps = max(1, total_steps)
    p1 = total_steps if phase1_frac >= 1 else max(1, round(total_steps * phase1_frac))
    if step < p1:
        s, n, scale = step, p1, 1.0
    else:
        s, n, scale = step - p1, total_steps - p1, phase2_scale
    warm = int(warmup_frac * n)
    if s < warm:
        lr = lr_min + (lr_peak - lr_min) * s / warm
    else:
        progress = min(1.0, (s - warm) / max(1, n - warm))
        lr = lr_min + 0.5 * (lr_peak - lr_min) * (1 + math.cos(math.pi * progress))
    return lr * scale


def lr_lambda(tc: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of ``lr_peak`` for ``torch.optim.lr_scheduler.LambdaLR``."""
    return partial(_lr_ratio, total_steps=total_steps, lr_peak=tc.lr_peak, lr_min=tc.lr_min,
                   warmup_frac=tc.warmup_frac, phase1_frac=tc.phase1_frac,
                   phase2_scale=tc.phase2_scale)


def _lr_ratio(step, total_steps, lr_peak, **kw):
    return lr_at(step, total_steps, lr_peak=lr_peak, **kw) / lr_peak


# --- data --------------------------------------------------------------------------------------
def steps_per_epoch(n_tokens: int, batch_size: int, block_size: int) -> int:
    """Optimizer steps per epoch: tokens in the split / (batch_size x block_size), at least 1."""
    return max(1, n_tokens // (batch_size * block_size))


def batch_plan(batch_size: int, micro_batch_size: int | None, num_processes: int) -> tuple[int, int, int]:
    """(sequences per process per step, micro-batch size, accumulation steps)."""
    if batch_size % num_processes:
        raise ValueError(f"batch_size {batch_size} is not divisible by {num_processes} processes")
    per = batch_size // num_processes
    micro = min(micro_batch_size or per, per)
    if per % micro:
        raise ValueError(f"per-process batch {per} is not divisible by micro_batch_size {micro}")
    return per, micro, per // micro


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


def peak_flops(name: str) -> float | None:
    """Peak dense bf16 FLOP/s used for MFU; None where we do not claim one (CPUs)."""
    if "H100" in name or "H200" in name:
        return 798e12  # measured matmul peak of an H100 SXM (the number; 989e12 nominal)
    if "A100" in name:
        return 312e12
    return None


def make_accelerator(tc: TrainConfig, log_with=None, project_dir=None, cpu: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available():
        # `accelerate launch --multi_gpu` / torchrun without GPUs: only cpu=True gives MULTI_CPU
        # (gloo); otherwise every process would silently train alone.
        cpu = True
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if (torch.cuda.is_available() and not cpu and torch.cuda.is_bf16_supported()) else "no"
    proj = ProjectConfiguration(project_dir=str(project_dir)) if project_dir else None
    return Accelerator(mixed_precision=mp, log_with=log_with, project_config=proj, cpu=cpu)


# --- the loop ----------------------------------------------------------------------------------
def _optimizers(model, tc: TrainConfig, device) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices only; with ``optimizer="muon"``, the blocks' Linear
    weights go to ``torch.optim.Muon`` instead (it orthogonalises 2-D updates only, so
    embeddings, gains, position tables and the tied head stay with AdamW)."""
    params = [p for p in model.parameters() if p.requires_grad]
    muon = []
    if tc.optimizer == "muon":
        from tinytrace.model import unwrap

        muon = [m.weight for m in unwrap(model).transformer.h.modules()
                if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    ids = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in ids]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"
    opts = [torch.optim.AdamW(groups, lr=tc.lr_peak, betas=tc.betas, eps=tc.eps, fused=fused)]
    if muon:
        if torch.device(device).type == "cpu" and not _native_bf16():
            logging.getLogger(__name__).warning(
                "optimizer=muon on a CPU without native bf16: torch.optim.Muon runs its "
                "Newton-Schulz iterations in bf16, emulated here (measured 1.4-6x slower steps)")
        opts.append(torch.optim.Muon(muon, lr=tc.muon_lr or tc.lr_peak, weight_decay=tc.weight_decay,
                                     momentum=tc.muon_momentum, adjust_lr_fn="match_rms_adamw"))
    return opts


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _train_step(model, fwd, optimizers, accelerator, batches: Iterable, grad_clip: float) -> torch.Tensor:
    """One optimizer step over micro-batches; returns the summed loss (a device tensor, no sync)."""
    total = None
    for x, y in batches:
        with accelerator.accumulate(model):
            _, loss = fwd(x, y)
            accelerator.backward(loss)
            if accelerator.sync_gradients and grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            for opt in optimizers:
                opt.step()  # a no-op until the last micro-batch (accelerate's accumulate)
                opt.zero_grad(set_to_none=True)
        total = loss.detach() if total is None else total + loss.detach()
    return total


@torch.no_grad()
def validation_loss(model, sampler: WindowSampler, n_windows: int, micro: int, accelerator) -> float:
    """Mean loss over ``n_windows`` evenly spaced windows of the stream, split over processes."""
    offsets = np.linspace(0, sampler.max_offset, n_windows).astype(np.int64)
    mine = offsets[accelerator.process_index::accelerator.num_processes]
    tot = torch.zeros((), device=accelerator.device)
    cnt = torch.zeros((), device=accelerator.device)
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), micro):
        x, y = sampler.windows(mine[i:i + micro])
        with accelerator.autocast():
            _, loss = model(x, y)
        tot += loss.float() * len(x)
        cnt += len(x)
    model.train(was_training)
    tot = accelerator.reduce(tot, "sum")
    cnt = accelerator.reduce(cnt, "sum")
    return (tot / cnt.clamp(min=1)).item()


def _find_state(out: Path) -> Path | None:
    """The latest complete Accelerate state (``trainer.json`` is written last)."""
    for name in (STATE_DIR, STATE_DIR + ".tmp", STATE_DIR + ".old"):
        if (out / name / TRAINER_FILE).exists():
            return out / name
    return None


class _TiedWeightsFilter(logging.Filter):
    """accelerate warns on every save that the tied ``lm_head.weight`` is stored once; expected."""

    def filter(self, record):
        return "Removed shared tensor" not in record.getMessage()


def _quiet_tied_weights() -> None:
    log = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedWeightsFilter) for f in log.filters):
        log.addFilter(_TiedWeightsFilter())


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(train_config: TrainConfig, model_config, data_dir, config_name: str, out_dir,
          resume: bool = False, callbacks: Iterable[Callable] = (), accelerator=None,
          log_with=None, progress: bool = True) -> dict:
    """Train a :class:`tinytrace.model.GPT` on ``data_dir/config_name`` train tokens into ``out_dir``.

    ``callbacks``: each is called as ``cb(epoch, model, accelerator, record)`` on every process
    after each epoch's checkpoint (``model`` is the unwrapped model in eval mode, ``epoch``
    counts from 1); a returned dict is merged into the epoch record of ``log.jsonl``.
    ``resume``: continue from ``out_dir/state`` if it exists (else start fresh); without it an
    existing state is an error. Returns a summary dict.
    """
    from tqdm.auto import tqdm

    from tinytrace.data import token_stream
    from tinytrace.model import GPT, save_checkpoint

    tc, mc = train_config, model_config
    out = Path(out_dir)
    _quiet_tied_weights()
    block = tc.block_size or mc.block_size
    if block > mc.block_size:
        raise ValueError(f"block_size {block} exceeds the model's context {mc.block_size}")
    state_dir = _find_state(out)
    if state_dir is not None and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume or choose another --out")
    saved = None
    if state_dir is not None:
        saved = json.loads((out / "run.json").read_text())
        # a field the saved run predates takes its default
        saved_tc, new_tc = TrainConfig.from_dict(saved["train"]).to_dict(), tc.to_dict()
        bad = [k for k in FIXED_FIELDS if saved_tc[k] != new_tc[k]]
        if saved["model"] != mc.to_dict():
            bad.append("model")
        if bad:
            raise ValueError(f"cannot resume {out}: {', '.join(bad)} differ from the saved run")

    acc = accelerator or make_accelerator(tc, log_with, out)
    if acc.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    per, micro, accum = batch_plan(tc.batch_size, tc.micro_batch_size, world)
    acc.gradient_accumulation_steps = accum

    stream = token_stream(data_dir, config_name, "train")
    spe = steps_per_epoch(len(stream), tc.batch_size, block)
    total = tc.epochs * spe
    stop = total if tc.max_steps is None else min(total, tc.max_steps)
    if saved is not None and saved["data"]["train_tokens"] != len(stream):
        raise ValueError(f"cannot resume {out}: the train split changed "
                         f"({saved['data']['train_tokens']} -> {len(stream)} tokens)")
    sampler = WindowSampler(stream, block, tc.batch_size, tc.seed, acc.device, tc.data_on_device)
    val_sampler = None
    if tc.val_windows:
        try:
            val_sampler = WindowSampler(token_stream(data_dir, config_name, "validation"), block,
                                        tc.val_windows, tc.seed, acc.device, tc.data_on_device)
        except (FileNotFoundError, ValueError):
            val_sampler = None

    from accelerate.utils import set_seed

    set_seed(tc.seed)
    model = GPT(mc)
    optimizers = _optimizers(model, tc, acc.device)
    # one schedule shape for every optimizer: each group's LR is its peak x lr_lambda
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(tc, total)) for o in optimizers]
    model, *optimizers = acc.prepare(model, *optimizers)
    # Not prepared: AcceleratedScheduler would step once per process; we step once per update.
    for sch in schedulers:
        acc.register_for_checkpointing(sch)
    fwd = torch.compile(model) if tc.compile else model
    compiled = tc.compile  # falls back to eager if the first compiled step fails
    raw = acc.unwrap_model(model)
    n_params = raw.num_params()

    step, tokens_seen, elapsed0 = 0, 0, 0.0
    if state_dir is not None:
        acc.load_state(str(state_dir))
        trainer = json.loads((state_dir / TRAINER_FILE).read_text())
        step, tokens_seen, elapsed0 = trainer["step"], trainer["tokens"], trainer["elapsed_s"]
    start_step = step
    tokens_per_step = tc.batch_size * block

    env = environment(acc)
    plan = {"steps_per_epoch": spe, "total_steps": total, "stop_step": stop, "block_size": block,
            "tokens_per_step": tokens_per_step, "per_process_batch": per,
            "micro_batch_size": micro, "accumulation_steps": accum}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if saved is None:
            run = {"train": tc.to_dict(), "model": mc.to_dict(), "params": n_params,
                   "data": {"dir": str(Path(data_dir).resolve()), "config": config_name,
                            "train_tokens": len(stream)},
                   "plan": plan, "env": env, "seed": tc.seed,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumes": []}
        else:
            run = saved
            run["resumes"].append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "max_steps": tc.max_steps, "env": env, "plan": plan})
        (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        _append_jsonl(out / "log.jsonl", {"event": "resume" if saved else "start", "step": step,
                                          "git_commit": env["git_commit"], "device": env["device"],
                                          "num_processes": world, "seed": tc.seed})
    if acc.log_with:
        acc.init_trackers("tinytrace", config={**{f"train/{k}": v for k, v in tc.to_dict().items()
                                                   if not isinstance(v, (list, tuple))},
                                               **{f"model/{k}": v for k, v in mc.to_dict().items()
                                                  if isinstance(v, (int, float, str, bool))}})

    def save(epoch_float: float) -> None:
        acc.wait_for_everyone()
        tmp = out / (STATE_DIR + ".tmp")
        if main and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if main:
            # The data cursor is the step: step s reads the windows drawn from (seed, s).
            info = {"step": step, "data_cursor": {"seed": tc.seed, "next_step": step},
                    "epoch": epoch_float, "tokens": tokens_seen,
                    "elapsed_s": elapsed0 + time.perf_counter() - t0, "seed": tc.seed,
                    "steps_per_epoch": spe, "total_steps": total}
            (tmp / TRAINER_FILE).write_text(json.dumps(info) + "\n")
            cur, old = out / STATE_DIR, out / (STATE_DIR + ".old")
            if cur.exists():
                if old.exists():
                    shutil.rmtree(old)
                cur.rename(old)
            tmp.rename(cur)
            if old.exists():
                shutil.rmtree(old)
            save_checkpoint(acc.unwrap_model(model), out,
                            extra={"train": tc.to_dict(), "step": step, "epoch": epoch_float,
                                   "data": {"config": config_name, "train_tokens": len(stream)}})
        acc.wait_for_everyone()

    last = {"loss": None, "val_loss": None, "lr": None}
    pbar = tqdm(total=stop, initial=step, disable=not (progress and acc.is_local_main_process),
                desc="train", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    t_log, step_log = t0, step
    loss_acc, n_micro = None, 0
    while step < stop:
        offs = sampler.local_offsets(step, rank, world)
        batches = (sampler.windows(offs[i:i + micro]) for i in range(0, per, micro))
        lr = schedulers[0].get_last_lr()[0]
        if compiled:
            batches, acc_step = list(batches), acc.step
            try:
                loss_sum = _train_step(model, fwd, optimizers, acc, batches, tc.grad_clip)
            except Exception as e:  # a compiler failure must not cost the run: train eagerly
                logging.getLogger(__name__).warning("torch.compile failed (%s: %s); training "
                                                    "eagerly", type(e).__name__, e)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                acc.step = acc_step  # accelerate's micro-batch counter: restart this step
                fwd = model
                loss_sum = _train_step(model, fwd, optimizers, acc, batches, tc.grad_clip)
                if main:
                    _append_jsonl(out / "log.jsonl", {"event": "compile_failed", "step": step,
                                                      "error": f"{type(e).__name__}: {e}"[:500]})
            compiled = False
        else:
            loss_sum = _train_step(model, fwd, optimizers, acc, batches, tc.grad_clip)
        for sch in schedulers:
            sch.step()
        loss_acc = loss_sum if loss_acc is None else loss_acc + loss_sum
        n_micro += accum
        step += 1
        tokens_seen += tokens_per_step
        pbar.update(1)
        epoch_end = step % spe == 0
        if step % tc.log_every == 0 or step == stop or epoch_end:
            loss = acc.reduce(loss_acc / n_micro, "mean").item()  # the only host sync
            now = time.perf_counter()
            tps = (step - step_log) * tokens_per_step / max(now - t_log, 1e-9)
            rec = {"event": "step", "step": step, "epoch": step / spe, "loss": loss, "lr": lr,
                   "tokens": tokens_seen, "tokens_per_s": tps,
                   "elapsed_s": elapsed0 + now - t0}
            last.update(loss=loss, lr=lr)
            if main:
                _append_jsonl(out / "log.jsonl", rec)
            if acc.log_with:
                acc.log({k: rec[k] for k in ("loss", "lr", "tokens_per_s", "epoch")}, step=step)
            pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
            t_log, step_log, loss_acc, n_micro = now, step, None, 0
        if epoch_end:
            epoch = step // spe
            rec = {"event": "epoch", "epoch": epoch, "step": step, "loss": last["loss"]}
            if val_sampler is not None:
                rec["val_loss"] = last["val_loss"] = validation_loss(
                    acc.unwrap_model(model), val_sampler, tc.val_windows, micro, acc)
            save(float(epoch))
            raw = acc.unwrap_model(model)
            raw.eval()
            for cb in callbacks:
                extra = cb(epoch, raw, acc, rec)
                if isinstance(extra, dict):
                    rec.update(extra)
            model.train()
            t_log = time.perf_counter()  # tokens/s measures training, not evaluation or saving
            rec["elapsed_s"] = elapsed0 + t_log - t0
            if main:
                _append_jsonl(out / "log.jsonl", rec)
            if acc.log_with:
                acc.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)
        elif (tc.save_every and step % tc.save_every == 0) or step == stop:
            save(step / spe)
            if step_log == step:
                t_log = time.perf_counter()
    pbar.close()
    seconds = time.perf_counter() - t0
    if step == start_step and not (out / "model.safetensors").exists():
        save(step / spe)  # nothing trained (e.g. --max-steps 0): still leave loadable weights
    summary = {"out_dir": str(out), "step": step, "start_step": start_step, "total_steps": total,
               "steps_per_epoch": spe, "epoch": step / spe, "loss": last["loss"],
               "val_loss": last["val_loss"], "tokens": tokens_seen, "params": n_params,
               "seconds": seconds,
               "tokens_per_s": (step - start_step) * tokens_per_step / max(seconds, 1e-9),
               "num_processes": world, "device": env["device"]}
    if main:
        _append_jsonl(out / "log.jsonl", {"event": "end", **summary})
    if acc.log_with:
        acc.end_training()
    return summary


# --- benchmark ---------------------------------------------------------------------------------
def measure_train_throughput(model: str = "tiny", steps: int = 10, batch_size: int = 8,
                             micro_batch_size: int | None = None, compile: bool = False,
                             device: str | None = None, warmup: int = 2, seed: int = 0) -> dict:
    """Tokens/s and MFU of the real training step on synthetic random tokens (no dataset)."""
    from tinytrace.model import GPT, get_model_config

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    mc = get_model_config(model)
    tc = get_train_config("paper", batch_size=batch_size, micro_batch_size=micro_batch_size,
                          compile=compile, seed=seed)
    acc = make_accelerator(tc, cpu=device == "cpu")
    per, micro, accum = batch_plan(batch_size, micro_batch_size, acc.num_processes)
    acc.gradient_accumulation_steps = accum
    torch.manual_seed(seed)
    net = GPT(mc)
    opts = _optimizers(net, tc, acc.device)
    net, *opts = acc.prepare(net, *opts)
    fwd = torch.compile(net) if compile else net
    T = mc.block_size
    gen = torch.Generator(device=acc.device).manual_seed(seed)
    data = [torch.randint(0, mc.vocab_size, (micro, T + 1), device=acc.device, generator=gen)
            for _ in range(accum)]
    batches = [(d[:, :-1], d[:, 1:]) for d in data]

    def sync():
        if acc.device.type == "cuda":
            torch.cuda.synchronize(acc.device)

    t_compile = time.perf_counter()
    for _ in range(warmup):
        _train_step(net, fwd, opts, acc, batches, tc.grad_clip)
    sync()
    t_compile = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = _train_step(net, fwd, opts, acc, batches, tc.grad_clip)
    sync()
    dt = time.perf_counter() - t0
    raw = acc.unwrap_model(net)
    tokens_per_s = steps * batch_size * T / dt
    fpt = raw.flops_per_token()
    name = device_name(acc.device)
    peak = peak_flops(name) if acc.device.type == "cuda" else None
    flops = fpt * tokens_per_s
    return {"model": model, "params": raw.num_params(), "flops_per_token": fpt,
            "tokens_per_s": round(tokens_per_s, 1), "achieved_tflops": round(flops / 1e12, 4),
            "peak_flops": peak, "mfu": None if peak is None else round(flops / peak, 4),
            "device": name, "device_type": acc.device.type, "mixed_precision": acc.mixed_precision,
            "compile": compile, "steps": steps, "warmup_steps": warmup,
            "warmup_s": round(t_compile, 3), "seconds": round(dt, 3), "batch_size": batch_size,
            "micro_batch_size": micro, "accumulation_steps": accum, "block_size": T,
            "loss": float(loss.item()) / accum, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def bench_train(args) -> int:
    """``tinytrace bench train``: prints one JSON line (after a readable table without --json)."""
    result = measure_train_throughput(
        model=args.model, steps=args.steps, batch_size=args.batch_size,
        micro_batch_size=getattr(args, "micro_batch_size", None),
        compile=getattr(args, "compile", False), device=getattr(args, "device", None))
    if not getattr(args, "json", False):
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    print(json.dumps(result))
    return 0


# --- command line ------------------------------------------------------------------------------
def add_cli(sub) -> None:
    from tinytrace.cli import key_value

    p = sub.add_parser("train", help="train a model with Accelerate",
                       description="Train on random windows of a built dataset's token stream "
                                   "(paper App. C.1, C.5). Run with `accelerate launch -m "
                                   "tinytrace train ...` for several GPUs or processes.")
    p.add_argument("--data", required=True, help="dataset folder (tinytrace data build --out)")
    p.add_argument("--config", required=True, help="dataset config name inside --data")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, run.json")
    p.add_argument("--model", default=None, help="model preset (paper, tiny, small, medium)")
    p.add_argument("--model-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="override a model config field, e.g. pe=rpe (repeatable)")
    p.add_argument("--train-preset", default=None, help=f"one of {', '.join(TRAIN_PRESETS)} (default paper)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps "
                   "(the schedule still spans --epochs)")
    p.add_argument("--batch-size", type=int, help="sequences per optimizer step, all processes")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward pass and process")
    p.add_argument("--block-size", type=int, help="training window (default: model context)")
    p.add_argument("--lr", type=float, help="peak LR (lr-min defaults to lr/10)")
    p.add_argument("--lr-min", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw (the paper's) or muon (hidden "
                   "matrices; AdamW for the rest)")
    p.add_argument("--muon-lr", type=float, help="peak LR of the Muon group (default: --lr)")
    p.add_argument("--seed", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--val-windows", type=int)
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out if any")
    p.add_argument("--log-with", default=None, help="Accelerate tracker (tensorboard, wandb, ...)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=handler)


_ARG_FIELDS = {"epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
               "micro_batch_size": "micro_batch_size", "block_size": "block_size",
               "lr": "lr_peak", "lr_min": "lr_min", "weight_decay": "weight_decay",
               "seed": "seed", "optimizer": "optimizer", "muon_lr": "muon_lr",
               "save_every": "save_every", "log_every": "log_every",
               "val_windows": "val_windows", "mixed_precision": "mixed_precision",
               "compile": "compile"}


def configs_from_args(args) -> tuple[TrainConfig, object]:
    """Train and model configs: the saved run's when resuming, else the presets; explicit
    arguments override either."""
    from tinytrace.model import ModelConfig, get_model_config

    run_json = Path(args.out) / "run.json"
    if args.resume and run_json.exists():
        saved = json.loads(run_json.read_text())
        tc = TrainConfig.from_dict(saved["train"])
        mc = ModelConfig.from_dict(saved["model"])
        if args.model or args.model_arg or args.train_preset:
            raise ValueError("--resume uses the saved model and preset; drop --model/--model-arg/--train-preset")
    else:
        mc = get_model_config(args.model or "paper", **dict(args.model_arg))
        tc = get_train_config(args.train_preset or "paper")
    changes = {f: getattr(args, a) for a, f in _ARG_FIELDS.items() if getattr(args, a) is not None}
    if "lr_peak" in changes and "lr_min" not in changes:
        changes["lr_min"] = changes["lr_peak"] / 10
    return replace(tc, **changes), mc


def handler(args) -> int:
    tc, mc = configs_from_args(args)
    summary = train(tc, mc, args.data, args.config, args.out, resume=args.resume,
                    log_with=args.log_with, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
