"""What the pre-training loop (:mod:`.loop`) and LoRA fine-tuning (:mod:`.sft`) share: the
Accelerate factory, the batch plan, the LR schedule, the optimizers, one optimizer step over
micro-batches, the validation loss, the JSONL log and the resumable state folder with its
checkpoint triggers (a signal, the wall clock)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import types
from contextlib import contextmanager
from functools import partial, update_wrapper
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from tinytrace.lang import tokenizer as tk
from tinytrace.model import unwrap
from tinytrace.provenance import mixed_precision

OPTIMIZERS = ("adamw", "muon")
STATE_DIR = "state"
TRAINER_FILE = "trainer.json"


def check_optimizer_fields(cfg) -> None:
    """The AdamW fields a train or fine-tuning config shares: torch.optim accepts some
    nonsense (a negative weight decay or clip) without a word."""
    b1, b2 = cfg.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or cfg.eps <= 0:
        raise ValueError(f"need 0 <= betas < 1 and eps > 0, got {cfg.betas}, {cfg.eps}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise ValueError(f"weight_decay and grad_clip must be >= 0 (grad_clip 0: off), got "
                         f"{cfg.weight_decay}, {cfg.grad_clip}")


def check_device(device: str | None) -> None:
    """A training device: None (the GPU when one is visible, else the CPU), "cpu" or "cuda"
    (then one must be visible: Accelerate would fall back to the CPU without a word)."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r} (choose a GPU with "
                         "CUDA_VISIBLE_DEVICES)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda, but torch sees no CUDA device here")


def make_accelerator(cfg, log_with=None, project_dir=None, cpu: bool = False) -> Accelerator:
    """An ``Accelerator`` with ``cfg.mixed_precision`` ("auto": what
    :func:`tinytrace.provenance.mixed_precision` picks for the GPU, bf16 from compute
    capability 8.0, fp16 with a gradient scaler below; fp32 on the CPU)."""
    if int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available():
        # `accelerate launch --multi_gpu` / torchrun without GPUs: only cpu=True gives MULTI_CPU
        # (gloo); otherwise every process would train alone on its own copy.
        cpu = True
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "no" if cpu else mixed_precision("cuda")
    proj = ProjectConfiguration(project_dir=str(project_dir)) if project_dir else None
    return Accelerator(mixed_precision=mp, log_with=log_with, project_config=proj, cpu=cpu)


@contextmanager
def deterministic_algorithms(setting: bool | None, device):
    """``torch.use_deterministic_algorithms`` for the block, restored after it. ``None``: on for
    a CPU, off for GPUs (see ``TrainConfig.deterministic``)."""
    on = torch.device(device).type == "cpu" if setting is None else setting
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield on
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def batch_plan(batch_size: int, micro_batch_size: int | None, num_processes: int) -> tuple[int, int, int]:
    """(sequences per process per step, micro-batch size, accumulation steps)."""
    if batch_size % num_processes:
        raise ValueError(f"batch_size {batch_size} is not divisible by {num_processes} processes")
    per = batch_size // num_processes
    micro = min(micro_batch_size or per, per)
    if per % micro:
        raise ValueError(f"per-process batch {per} is not divisible by micro_batch_size {micro}")
    return per, micro, per // micro


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


def lr_lambda(total_steps: int, lr_peak: float, **shape) -> Callable[[int], float]:
    """:func:`lr_at` as a multiplier of ``lr_peak``, for ``torch.optim.lr_scheduler.LambdaLR``
    (a ``partial``: LambdaLR keeps callable objects in its state dict, plain functions not)."""
    return partial(_lr_ratio, total_steps=total_steps, lr_peak=lr_peak, **shape)


def _lr_ratio(step, total_steps, lr_peak, **shape):
    return lr_at(step, total_steps, lr_peak=lr_peak, **shape) / lr_peak


def lr_schedulers(optimizers, total_steps: int, schedule: dict) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One ``LambdaLR`` per optimizer, all of one shape: each group's LR is its own peak times
    the multiplier. Not passed to ``accelerator.prepare``: its wrapper steps once per process,
    the loops step once per optimizer update."""
    return [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(total_steps, **schedule)) for o in optimizers]


# --- optimizers --------------------------------------------------------------------------------
def make_optimizers(model, device, lr: float, betas, eps: float, weight_decay: float,
                    optimizer: str = "adamw", muon_lr: float | None = None,
                    muon_momentum: float = 0.95, compile: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW over the trainable parameters, weight decay on matrices only; with
    ``optimizer="muon"``, the blocks' Linear weights go to ``torch.optim.Muon`` instead (it
    orthogonalises 2-D updates only, so embeddings, gains, position tables and the tied head
    stay with AdamW). ``compile``: each ``step`` runs through ``torch.compile``
    (:func:`compile_steps`), AdamW then in its plain form, which Inductor fuses itself; call it
    before creating the LR schedulers, which wrap ``step``."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    muon = []
    if optimizer == "muon":
        muon = [m.weight for m in unwrap(model).transformer.h.modules()
                if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    ids = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in ids]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # LoRA without biases has no 1-D parameter
    fused = torch.device(device).type == "cuda" and not compile
    opts = [torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)]
    if muon:
        if torch.device(device).type == "cpu" and not _native_bf16():
            logging.getLogger(__name__).warning(
                "optimizer=muon on a CPU without native bf16: torch.optim.Muon runs its "
                "Newton-Schulz iterations in bf16, emulated here: each step costs more, "
                "which batches of a few thousand tokens amortise")
        opts.append(torch.optim.Muon(muon, lr=muon_lr or lr, weight_decay=weight_decay,
                                     momentum=muon_momentum, adjust_lr_fn="match_rms_adamw"))
    if compile:
        compile_steps(opts)
    return opts


def tensor_lrs(optimizers) -> None:
    """Every group's learning rate as a 0-d tensor (the schedulers ``fill_`` it in place): a
    compiled step reads it as an input, one graph for every rate (a float compiles a second
    graph when it first changes, which rounds Muon's bf16 differently). Needed again after
    ``load_state_dict``, which restores the saved values as they were."""
    for opt in optimizers:
        for g in opt.param_groups:
            if not isinstance(g["lr"], torch.Tensor):
                # on the parameters' device, where accelerate's prepare moves it too
                g["lr"] = torch.tensor(float(g["lr"]), device=g["params"][0].device)


def compile_steps(optimizers) -> None:
    """Run each optimizer's ``step`` through ``torch.compile`` (learning rates as tensors,
    :func:`tensor_lrs`): the per-parameter loops of AdamW and of Muon's Newton-Schulz iterations
    become a few fused kernels instead of hundreds of small launches. If compiling fails, the
    step warns once and runs eagerly from then on. Dynamo guards on the optimizer object, so one
    process compiles the steps of at most ``torch._dynamo.config.recompile_limit`` optimizers
    (later ones step eagerly): enough for a run or a few per process."""
    tensor_lrs(optimizers)
    for opt in optimizers:
        opt.step = types.MethodType(_CompiledStep(type(opt).step), opt)


class _CompiledStep:
    """``Optimizer.step`` through ``torch.compile``, eager after a compiler failure. A plain
    function's ``__get__`` makes it a bound method, which LR schedulers expect to wrap."""

    def __init__(self, step):
        self.eager, self.compiled = step, torch.compile(step)
        update_wrapper(self, step)

    def __call__(self, opt, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(opt, *args, **kwargs)
            except Exception as e:  # a compiler failure must not cost the run
                logging.getLogger(__name__).warning(
                    "torch.compile of %s.step failed (%s: %s); stepping eagerly",
                    type(opt).__name__, type(e).__name__, e)
                self.compiled = None
        return self.eager(opt, *args, **kwargs)

    def __get__(self, obj, objtype=None):
        return self if obj is None else types.MethodType(self, obj)


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# --- one step, validation, log -----------------------------------------------------------------
def optimizer_step(model, optimizers, accelerator, batches: Iterable, loss_fn: Callable,
                   grad_clip: float) -> torch.Tensor:
    """One optimizer step over micro-batches with ``accelerator.accumulate`` (gradients are
    all-reduced on the last one; ``accelerator.gradient_accumulation_steps`` must be their
    number). ``loss_fn(x, y) -> (loss to backpropagate, value to report)``; accelerate divides
    the first by the accumulation steps. Returns the sum of the reported values (a device
    tensor: no host sync)."""
    total = None
    for x, y in batches:
        with accelerator.accumulate(model):
            loss, report = loss_fn(x, y)
            accelerator.backward(loss)
            if accelerator.sync_gradients and grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            for opt in optimizers:
                opt.step()  # a no-op until the last micro-batch (accelerate's accumulate)
                opt.zero_grad(set_to_none=True)
        # a copy: under CUDA graphs (compile mode reduce-overhead) the next micro-batch's
        # replay overwrites the graph's outputs
        total = report.clone() if total is None else total + report
    return total


def lm_loss(fwd, x, y, state_weight: float = 1.0):
    """The pre-training ``loss_fn`` of :func:`optimizer_step`: the model's mean cross-entropy
    (the paper's objective). ``state_weight`` != 1 weighs the targets in a state list
    (:func:`state_targets`) that much more in the mean; the reported value stays the plain mean,
    comparable across weights."""
    if state_weight == 1.0:
        _, loss = fwd(x, y)
        return loss, loss.detach()
    logits, _ = fwd(x)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.reshape(-1), reduction="none").view_as(y)
    w = 1.0 + (state_weight - 1.0) * state_targets(x).float()
    return (ce * w).sum() / w.sum(), ce.detach().mean()


def state_targets(x: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the target after position t (``x[:, t + 1]``) lies in a state list, i.e. the
    last ``$`` in ``x[:, :t + 1]`` comes after the last line break: the variable names, values and
    separators of ``$a?1;b?2`` and the line end that closes the list. These carry the execution
    itself (each step's and the final state); the rest of a trace copies the snippet. Tokens
    before a window's first line break count as outside."""
    pos = torch.arange(x.size(1), device=x.device).expand_as(x)
    none = torch.full_like(pos, -1)
    dollar = torch.where(x == tk.STOI["$"], pos, none).cummax(1).values
    breaks = (x == tk.NEWLINE_ID) | (x == tk.STEP_ID) | (x == tk.EOS_ID)
    line = torch.where(breaks, pos, none).cummax(1).values
    return dollar > line


@torch.no_grad()
def validation_loss(model, batches: Iterable, accelerator, loss_fn: Callable) -> float:
    """Weighted mean loss over this process's ``batches``, all processes together:
    ``loss_fn(model, x, y) -> (summed loss, weight)``, under the accelerator's autocast."""
    tot = torch.zeros((), device=accelerator.device)
    cnt = torch.zeros((), device=accelerator.device)
    was_training = model.training
    model.eval()
    for x, y in batches:
        with accelerator.autocast():
            s, n = loss_fn(model, x, y)
        tot += s
        cnt += n
    model.train(was_training)
    tot, cnt = accelerator.reduce(tot, "sum"), accelerator.reduce(cnt, "sum")
    return (tot / cnt.clamp(min=1)).item()


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --- resumable state ---------------------------------------------------------------------------
def save_state(accelerator, out: Path, info: dict) -> Path:
    """The Accelerate state (model, optimizers, registered schedulers, RNG) plus ``info`` as
    ``trainer.json`` (the loop's counters and data cursor), written to ``state.tmp`` and then
    swapped in for ``out/state``: a kill at any moment leaves one complete state
    (:func:`find_state`). Called on every process."""
    acc, main = accelerator, accelerator.is_main_process
    acc.wait_for_everyone()
    tmp, cur, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    if main and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if main:
        (tmp / TRAINER_FILE).write_text(json.dumps(info) + "\n")  # last: marks the state complete
        if cur.exists():
            if old.exists():
                shutil.rmtree(old)
            cur.rename(old)
        tmp.rename(cur)
        if old.exists():
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return cur


def find_state(out: Path) -> Path | None:
    """The latest complete state in ``out`` (``trainer.json`` is written last), or None."""
    for name in (STATE_DIR, STATE_DIR + ".tmp", STATE_DIR + ".old"):
        if (out / name / TRAINER_FILE).exists():
            return out / name
    return None


def remove_state(out: Path) -> None:
    for name in (STATE_DIR, STATE_DIR + ".tmp", STATE_DIR + ".old"):
        shutil.rmtree(out / name, ignore_errors=True)


def poll(accelerator, stop, t_saved: float, minutes: float, agree: bool) -> tuple[int, bool]:
    """(the signal in ``stop``, or 0; whether ``minutes`` of wall clock have passed since
    ``t_saved``, a ``time.monotonic()``), the same on every process. With several processes
    they compare only where ``agree`` (steps where the loop syncs anyway) and report nothing
    elsewhere: a process that saved or stopped alone would leave the others waiting in a
    collective."""
    due = bool(minutes) and time.monotonic() - t_saved >= 60 * minutes
    signum = stop.signum or 0
    if accelerator.num_processes > 1:
        if not agree:
            return 0, False
        flags = accelerator.gather(torch.tensor([[signum, int(due)]], device=accelerator.device))
        signum, due = (int(v) for v in flags.max(0).values.tolist())
    return signum, bool(due)


class _TiedWeightsFilter(logging.Filter):
    """accelerate warns on every save that the tied ``lm_head.weight`` is stored once; expected."""

    def filter(self, record):
        return "Removed shared tensor" not in record.getMessage()


def quiet_tied_weights() -> None:
    log = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedWeightsFilter) for f in log.filters):
        log.addFilter(_TiedWeightsFilter())
