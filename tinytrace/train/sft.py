"""Supervised fine-tuning with LoRA and instruction masking (paper Sec. 4.4, App. G.1).

- Data: one sequence per example (not random windows): the example's tokens from its start
  offset, truncated to ``block_size + 1`` tokens (inputs and targets shifted by one) and right
  padded with PAD. Instruction masking: the prompt is the snippet up to and including the first
  ``#STEP`` token; its positions and the padding get target -100, so "the model predicts every
  token but learns only from the output region". Examples with no output token inside the
  window are dropped (their loss would be 0/0). Training uses the first ``data_size`` usable
  examples of the train split (nested across sizes), reshuffled every epoch from ``(seed, epoch)``.
- Loss: the sum of the cross-entropies of the output tokens of an optimizer step divided by
  their number (token-weighted over micro-batches and processes, not a mean of batch means).
- LoRA (``peft``, imported lazily: it pulls in transformers): rank-``r`` adapters on every
  Linear layer of the blocks (``c_attn``, ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``); all other
  parameters frozen except the LoRA weights and the Linear biases, which exist only with
  ``ModelConfig.bias``. The tied ``lm_head``/``wte`` is not adapted: merging an adapter into
  ``lm_head`` would also rewrite the input embedding. :func:`lora_param_count` is the closed
  form (paper model, r = 8: 565,248 trainable; the paper reports 2.2M).
- Optimizer and schedule (G.1): AdamW (0.9, 0.95), weight decay 0.1 on the adapter matrices,
  peak LR 1e-3, linear warmup over 10% of the steps, cosine to 10% of the peak. The warmup
  starts from the floor (10% of the peak), as the pre-training schedule :func:`.common.lr_at`
  does; G.1 does not say where it starts. Gradient clipping 1.0 (not stated; as pre-training).
- The loop is the pre-training loop's (:mod:`.common`): the same optimizer factory, a
  ``LambdaLR`` schedule stepped once per update, micro-batches under ``accelerator.accumulate``
  (one all-reduce per step under DDP), the same validation and log helpers.
- Validation: the same masked loss on the first ``val_examples`` validation examples, before
  training and every ``eval_every_frac`` (2.5%) of the steps; each new best is merged into the
  base weights (``merge_and_unload`` on a copy) and saved with :func:`model.save_checkpoint`,
  so ``load_checkpoint(out_dir)`` is a plain GPT: the best checkpoint (step 0 = the base
  weights if fine-tuning never improves the validation loss).
- Output folder: ``sft.json`` (resolved config, base run, data, plan, environment),
  ``log.jsonl``, ``model.safetensors`` + ``config.json`` (best merged model), ``state/`` while
  the run is unfinished, and ``done.json`` (the summary, written last). A folder with
  ``done.json`` made from the same config, base run and data is returned as is (a cache;
  another config is an error).
- Resume: the state (adapters, optimizer, schedule, RNG, step, best so far; the data cursor is
  the step, as the epoch's order comes from ``(seed, epoch)``) is saved every
  ``save_every_minutes`` of wall clock and when SIGINT or SIGTERM stops the run at a step
  boundary (:mod:`tinytrace.interrupt`). ``resume=True`` continues an unfinished run of the
  same config, base run and data exactly; without it an unfinished run starts again.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from tinytrace.data import token_stream
from tinytrace.interrupt import Interrupted, StopRequest, stop_requests
from tinytrace.lang import tokenizer as tk
from tinytrace.model import load_checkpoint, save_checkpoint
from tinytrace.presets import ConfigDict, Presets
from tinytrace.provenance import environment

from .common import (
    STATE_DIR,
    TRAINER_FILE,
    append_jsonl,
    batch_plan,
    check_device,
    check_optimizer_fields,
    find_state,
    lr_schedulers,
    make_accelerator,
    make_optimizers,
    optimizer_step,
    poll,
    quiet_tied_weights,
    remove_state,
    save_state,
)
from .common import lr_at as _lr_at
from .common import validation_loss as _validation_loss

DONE_FILE = "done.json"
RUN_FILE = "sft.json"
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")  # c_proj matches attn.c_proj and mlp.c_proj


# --- configuration -----------------------------------------------------------------------------
@dataclass
class SFTConfig(ConfigDict):
    """LoRA, optimizer, schedule, batch and evaluation of one fine-tuning run (App. G.1).
    ``batch_size`` counts sequences per optimizer step over all processes; ``micro_batch_size``
    is per process and forward pass (None: the whole per-process share at once)."""

    name: str = "paper"
    rank: int = 8
    alpha: float = 16.0  # LoRA scale alpha / rank = 2 (not stated in the paper)
    lora_dropout: float = 0.0  # not stated in the paper
    target_modules: tuple[str, ...] = LORA_TARGETS
    lr: float = 1e-3  # peak
    lr_min_ratio: float = 0.1  # cosine floor = lr * lr_min_ratio
    warmup_frac: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    batch_size: int = 512
    micro_batch_size: int | None = 64
    epochs: int = 1
    data_size: int | None = None  # training examples; None = the whole train split
    eval_every_frac: float = 0.025
    val_examples: int = 512
    block_size: int | None = None  # None = the model's context
    seed: int = 0
    log_every: int = 10
    mixed_precision: str = "auto"  # read by make_accelerator (tinytrace.provenance.mixed_precision)
    save_every_minutes: float = 10.0  # wall clock between state saves (0: off); not compared

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.target_modules = tuple(self.target_modules)
        for k in ("rank", "batch_size", "epochs", "val_examples", "log_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("micro_batch_size", "data_size"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1 or None, got {getattr(self, k)}")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if not 0 < self.eval_every_frac <= 1 or not 0 <= self.warmup_frac < 1:
            raise ValueError("need 0 < eval_every_frac <= 1 and 0 <= warmup_frac < 1")
        if self.save_every_minutes < 0:
            raise ValueError(f"save_every_minutes must be >= 0, got {self.save_every_minutes}")
        if self.lr <= 0 or not 0 <= self.lr_min_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= lr_min_ratio <= 1, got {self.lr}, {self.lr_min_ratio}")
        if self.alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"need alpha > 0 and 0 <= lora_dropout < 1, got {self.alpha}, "
                             f"{self.lora_dropout}")
        check_optimizer_fields(self)
        unknown = set(self.target_modules) - set(LORA_TARGETS)
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {LORA_TARGETS}, "
                             f"got {self.target_modules}")

    @property
    def lr_schedule(self) -> dict:
        """The arguments of :func:`.common.lr_at`: one phase from and to ``lr * lr_min_ratio``."""
        return dict(lr_peak=self.lr, lr_min=self.lr * self.lr_min_ratio,
                    warmup_frac=self.warmup_frac, phase1_frac=1.0)


SFT_PRESETS: Presets[SFTConfig] = Presets("sft preset", {
    # App. G.1, the best run of Table 3: 1,048,576 examples, 1 epoch, 512 x 512-token sequences.
    "paper": SFTConfig(data_size=1_048_576),
    # A laptop run of a small model.
    "cpu": SFTConfig(name="cpu", batch_size=32, micro_batch_size=None, block_size=256,
                     data_size=2048, val_examples=128),
    # Smoke tests: a few tiny steps.
    "smoke": SFTConfig(name="smoke", batch_size=8, micro_batch_size=None, block_size=128,
                       data_size=64, val_examples=16, log_every=1),
})


def get_sft_config(name: str = "paper", **overrides) -> SFTConfig:
    return SFT_PRESETS.get(name, **overrides)


def lr_at(step: int, total_steps: int, cfg: SFTConfig) -> float:
    """LR of optimizer step ``step``: one phase of the pre-training schedule (:func:`.common.lr_at`)."""
    return _lr_at(step, total_steps, **cfg.lr_schedule)


# --- data --------------------------------------------------------------------------------------
def prompt_length(tokens) -> int:
    """Tokens of the prompt: up to and including the first ``#STEP`` (len + 1 if there is none)."""
    hits = np.flatnonzero(np.asarray(tokens) == tk.STEP_ID)
    return int(hits[0]) + 1 if len(hits) else len(tokens) + 1


def masked_batch(examples: list, prompt_lens, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (B, T) int64 with T = the longest example's length - 1, at most block_size.

    Row i holds example i truncated to ``block_size + 1`` tokens, right-padded with PAD; y is x
    shifted by one, with -100 where the predicted token lies in the prompt or in the padding."""
    lens = np.array([min(len(e), block_size + 1) for e in examples], dtype=np.int64)
    width = int(lens.max())
    buf = np.full((len(examples), width), tk.PAD_ID, dtype=np.int64)
    for i, e in enumerate(examples):
        buf[i, :lens[i]] = np.asarray(e[:lens[i]])
    x, y = buf[:, :-1], buf[:, 1:].copy()
    nxt = np.arange(1, width)[None]  # position of the token that y[:, t] predicts
    y[(nxt < np.asarray(prompt_lens)[:, None]) | (nxt >= lens[:, None])] = -100
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


class ExampleSet:
    """The usable examples of one split: start offsets, lengths and prompt lengths.

    Keeps the first ``limit`` examples that have at least one output token inside a
    ``block_size + 1`` window; ``stats`` counts what was scanned, dropped and truncated."""

    def __init__(self, data_dir, config: str, split: str, block_size: int, limit: int | None = None,
                 chunk: int = 65_536):
        self.tokens = token_stream(data_dir, config, split)
        idx_path = Path(data_dir) / config / "tokens" / f"{split}.idx.npy"
        if not idx_path.exists():
            raise FileNotFoundError(f"{idx_path} not found: build {config!r} with a {split} split and tokens")
        starts_all = np.load(idx_path).astype(np.int64)
        ends_all = np.append(starts_all[1:], len(self.tokens))
        self.block_size, self.split = block_size, split
        keep_s, keep_l, keep_p = [], [], []
        have = scanned = dropped = truncated = 0
        need = len(starts_all) if limit is None else limit
        for a in range(0, len(starts_all), chunk):
            if have >= need:
                break
            s, e = starts_all[a:a + chunk], ends_all[a:a + chunk]
            lo, hi = int(s[0]), int(e[-1])
            steps = np.flatnonzero(np.asarray(self.tokens[lo:hi]) == tk.STEP_ID) + lo
            if len(steps):  # first #STEP at or after each start; beyond the example's end: none
                first = steps[np.minimum(np.searchsorted(steps, s), len(steps) - 1)]
                first = np.where((first >= s) & (first < e), first, e)
            else:
                first = e
            plen, n = first - s + 1, e - s
            ok = plen < np.minimum(n, block_size + 1)  # at least one output token in the window
            sel = np.flatnonzero(ok)[:need - have]
            last = sel[-1] + 1 if have + len(sel) == need else len(s)  # examples looked at
            scanned += int(last)
            dropped += int((~ok[:last]).sum())
            truncated += int((n[sel] > block_size + 1).sum())
            keep_s.append(s[sel]), keep_l.append(n[sel]), keep_p.append(plen[sel])
            have += len(sel)
        cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64))
        self.starts, self.lens, self.prompt_lens = cat(keep_s), cat(keep_l), cat(keep_p)
        self.n_targets = np.minimum(self.lens, block_size + 1) - self.prompt_lens  # learned tokens
        self.stats = {"split": split, "examples": len(self.starts), "scanned": scanned,
                      "available": len(starts_all), "dropped_no_output": dropped,
                      "truncated": truncated, "requested": limit,
                      "output_tokens": int(self.n_targets.sum())}

    def __len__(self) -> int:
        return len(self.starts)

    def example(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.starts[i]:self.starts[i] + self.lens[i]])

    def batch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        ids = np.asarray(ids, dtype=np.int64)
        ex = [np.asarray(self.tokens[s:s + min(n, self.block_size + 1)])
              for s, n in zip(self.starts[ids], self.lens[ids])]
        return masked_batch(ex, self.prompt_lens[ids], self.block_size)


# --- LoRA --------------------------------------------------------------------------------------
def lora_param_count(model_config, rank: int, targets=LORA_TARGETS) -> int:
    """Closed-form trainable parameters of :func:`apply_lora`: r * (in + out) per adapted Linear,
    plus every Linear bias when ``model_config.bias`` (tested equal to the real count)."""
    d, L = model_config.n_embd, model_config.n_layer
    shapes = {"c_attn": [(d, 3 * d)], "c_proj": [(d, d), (4 * d, d)], "c_fc": [(d, 4 * d)]}
    n = L * sum(rank * (i + o) for t in set(targets) for i, o in shapes[t])
    return n + (L * 9 * d if model_config.bias else 0)


def apply_lora(model, cfg: SFTConfig):
    """Wrap a :class:`model.GPT` in a peft ``PeftModel``: adapters on ``cfg.target_modules``;
    only the adapters (and the Linear biases, if any) stay trainable. Without peft (the
    ``lora`` extra) a ``ValueError`` says how to install it (the CLI prints it in one line)."""
    try:
        from peft import (  # lazy: an optional extra that imports transformers
            LoraConfig,
            get_peft_model,
        )
    except ModuleNotFoundError as e:
        if e.name != "peft":  # peft is there but something it imports is not: say that
            raise
        raise ValueError("LoRA fine-tuning needs peft: pip install 'tinytrace[lora]'") from None

    lc = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=list(cfg.target_modules),
                    bias="all" if model.config.bias else "none")
    return get_peft_model(model, lc)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters, a tied tensor counted once."""
    ps = list(model.parameters())  # nn.Module.parameters() already skips repeated tensors
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


def merged_copy(peft_model):
    """A plain GPT with the adapters merged into its weights; ``peft_model`` is left untouched."""
    return copy.deepcopy(peft_model).merge_and_unload()


# --- loss --------------------------------------------------------------------------------------
def masked_loss_sum(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies over the targets != -100 (fp32)."""
    logits, _ = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                           ignore_index=-100, reduction="sum")


def validation_loss(model, examples: ExampleSet, micro: int, accelerator) -> float:
    """Token-weighted masked loss over all of ``examples``, split over processes."""
    mine = np.arange(len(examples))[accelerator.process_index::accelerator.num_processes]
    batches = (tuple(t.to(accelerator.device) for t in examples.batch(mine[i:i + micro]))
               for i in range(0, len(mine), micro))
    return _validation_loss(model, batches, accelerator,
                            lambda m, x, y: (masked_loss_sum(m, x, y), (y != -100).sum()))


# --- the run's steps ---------------------------------------------------------------------------
def _read_same_run(path: Path, cfg: SFTConfig, base: Path, data_dir, config_name: str,
                   what: str) -> dict:
    """The record ``path`` (``done.json`` or ``sft.json``) if it was made from the same config,
    base run and data (folder names, not absolute paths: a moved cache stays valid); else an
    error. Its config is read with the strict ``SFTConfig.from_dict`` (an unknown field is an
    error); ``save_every_minutes`` is not compared (it does not change the result)."""
    record = json.loads(path.read_text())
    try:
        saved = SFTConfig.from_dict(record["sft"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} does not hold this code's SFTConfig "
                         f"({type(e).__name__}: {e}); choose another out_dir") from None
    data = record.get("data", {})
    want = {"sft": cfg, "base_run": base.resolve().name,
            "data": [Path(data_dir).resolve().name, config_name]}
    got = {"sft": replace(saved, save_every_minutes=cfg.save_every_minutes),
           "base_run": Path(record.get("base_run", "")).name,
           "data": [Path(data.get("dir", "")).name, data.get("config")]}
    bad = [k for k in want if got[k] != want[k]]
    if bad:
        raise ValueError(f"{path.parent} holds a {what} fine-tuning run with another "
                         f"{', '.join(bad)}; choose another out_dir")
    return record


def _check_cache(out: Path, cfg: SFTConfig, base: Path, data_dir, config_name: str) -> dict | None:
    """The summary of a finished run in ``out`` made from the same config, base run and data;
    None when there is none."""
    if not (out / DONE_FILE).exists():
        return None
    return {**_read_same_run(out / DONE_FILE, cfg, base, data_dir, config_name, "finished"),
            "cached": True}


def _check_out(out: Path, resume: bool) -> Path | None:
    """The saved state to continue from (``resume``), or None for a new run. A new run never
    writes over another: a folder holding a pre-training run (or weights or a state without
    ``sft.json``) is refused, and so is an unfinished fine-tuning run with a saved state unless
    ``resume`` (as :func:`tinytrace.train.loop.check_resume` does for pre-training)."""
    state = find_state(out)
    ours = (out / RUN_FILE).exists()
    if (out / "run.json").exists() or (not ours and (state or (out / "model.safetensors").exists())):
        raise ValueError(f"{out} holds a run that is not a fine-tuning run (a pre-training run's "
                         "files); choose another --out")
    if state is not None and not resume:
        raise ValueError(f"{out} already holds an unfinished fine-tuning run with a saved state; "
                         "pass --resume to continue it or choose another --out")
    return state


@dataclass
class _Run:
    """A fine-tuning run's parts and counters, passed to the loop's steps."""

    cfg: SFTConfig
    out: Path
    acc: Accelerator
    model: torch.nn.Module  # the peft model as prepared by Accelerate
    optimizers: list
    schedulers: list
    train_set: ExampleSet
    val_set: ExampleSet
    header: dict  # config, base run, data, plan and parameter counts: sft.json and the summary
    t0: float = 0.0
    elapsed0: float = 0.0  # seconds trained before this process (resumed runs)
    loss_sum: torch.Tensor | None = None  # this process's summed output-token losses since the last log
    tok_sum: int = 0  # output tokens of the global batches since the last log
    tokens: int = 0
    last_loss: float | None = None
    best: dict = field(default_factory=lambda: {"step": None, "val_loss": math.inf})
    vals: dict = field(default_factory=lambda: {"initial": None, "last": None})  # val losses
    stop: StopRequest = field(default_factory=StopRequest)
    t_saved: float = 0.0  # monotonic time of the last state save

    @property
    def plan(self) -> dict:
        return self.header["plan"]

    def log(self, record: dict) -> None:
        if self.acc.is_main_process:
            append_jsonl(self.out / "log.jsonl", record)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0


def _setup(cfg: SFTConfig, acc: Accelerator, base: Path, out: Path, data_dir, config_name: str) -> _Run:
    """Base model with LoRA, example sets, optimizer, schedule and plan, prepared by ``acc``."""
    per, micro, accum = batch_plan(cfg.batch_size, cfg.micro_batch_size, acc.num_processes)
    acc.gradient_accumulation_steps = accum
    acc.step = 0  # a fresh micro-batch count (a reused accelerator may hold another loop's)
    set_seed(cfg.seed)
    model = load_checkpoint(base)
    mc = model.config
    block = cfg.block_size or mc.block_size
    if block > mc.block_size:
        raise ValueError(f"block_size {block} exceeds the model's context {mc.block_size}")
    base_params = model.num_params()
    train_set = ExampleSet(data_dir, config_name, "train", block, cfg.data_size)
    val_set = ExampleSet(data_dir, config_name, "validation", block, cfg.val_examples)
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"{len(train_set)} usable training examples, fewer than one batch "
                         f"({cfg.batch_size})")
    if len(val_set) == 0:
        raise ValueError(f"no usable validation examples in {data_dir}/{config_name}")
    if len(val_set) < cfg.val_examples:
        logging.getLogger(__name__).warning(
            "validating on %d examples, fewer than val_examples=%d: the validation split of "
            "%s/%s holds no more usable ones", len(val_set), cfg.val_examples, data_dir, config_name)
    spe = len(train_set) // cfg.batch_size  # the last partial batch of an epoch is dropped
    total = cfg.epochs * spe
    peft_model = apply_lora(model, cfg)
    trainable, total_params = count_params(peft_model)
    optimizers = make_optimizers(peft_model, acc.device, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
    schedulers = lr_schedulers(optimizers, total, cfg.lr_schedule)
    net, *optimizers = acc.prepare(peft_model, *optimizers)
    for sch in schedulers:
        acc.register_for_checkpointing(sch)
    plan = {"steps_per_epoch": spe, "total_steps": total,
            "eval_every": max(1, round(cfg.eval_every_frac * total)), "block_size": block,
            "per_process_batch": per, "micro_batch_size": micro, "accumulation_steps": accum}
    data_info = {"dir": str(Path(data_dir).resolve()), "config": config_name,
                 "train": train_set.stats, "validation": val_set.stats}
    header = {"sft": cfg.to_dict(), "base_run": str(base.resolve()), "model": mc.to_dict(),
              "data": data_info, "plan": plan, "trainable_params": trainable,
              "total_params": total_params, "base_params": base_params, "seed": cfg.seed}
    return _Run(cfg=cfg, out=out, acc=acc, model=net, optimizers=optimizers,
                schedulers=schedulers, train_set=train_set, val_set=val_set, header=header)


def _write_run_record(r: _Run, env: dict) -> None:
    """A fresh ``sft.json`` and the start line of ``log.jsonl`` (an unfinished run's files go)."""
    if r.acc.is_main_process:
        r.out.mkdir(parents=True, exist_ok=True)
        for stale in (DONE_FILE, "log.jsonl"):
            (r.out / stale).unlink(missing_ok=True)
        remove_state(r.out)
        run = {**r.header, "env": env, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (r.out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    r.log({"event": "start", **r.plan, "trainable_params": r.header["trainable_params"],
           "train_examples": len(r.train_set), "val_examples": len(r.val_set),
           "git_commit": env["git_commit"], "device": env["device"],
           "num_processes": r.acc.num_processes, "seed": r.cfg.seed})


def _evaluate_and_keep(r: _Run, step: int) -> float:
    """Validation loss; a new best is merged into the base weights and saved as the checkpoint."""
    raw = r.acc.unwrap_model(r.model)
    val = validation_loss(raw, r.val_set, r.plan["micro_batch_size"], r.acc)
    is_best = val < r.best["val_loss"]
    if is_best:
        r.best.update(step=step, val_loss=val)
        if r.acc.is_main_process:
            save_checkpoint(merged_copy(raw), r.out, extra={
                "sft": r.cfg.to_dict(), "base_run": r.header["base_run"], "step": step,
                "val_loss": val, "trainable_params": r.header["trainable_params"],
                "data": {"config": r.header["data"]["config"], "train_examples": len(r.train_set)}})
    r.vals["last"] = val
    r.log({"event": "eval", "step": step, "val_loss": val, "best": is_best,
           "best_val_loss": r.best["val_loss"], "elapsed_s": r.elapsed()})
    r.acc.wait_for_everyone()
    return val


def _save_state(r: _Run, step: int) -> None:
    """The resumable state after ``step`` optimizer steps (:func:`.common.save_state`); the
    data cursor is the step (the epoch's order comes from ``(seed, epoch)``)."""
    save_state(r.acc, r.out, {
        "step": step, "data_cursor": {"seed": r.cfg.seed, "next_step": step},
        "tokens": r.tokens, "best": r.best, "val_losses": r.vals, "last_loss": r.last_loss,
        "elapsed_s": r.elapsed(), "total_steps": r.plan["total_steps"]})
    r.t_saved = time.monotonic()


def _load_state(r: _Run, state_dir: Path) -> int:
    """Restore a saved state into ``r``; returns its step."""
    r.acc.load_state(str(state_dir))
    info = json.loads((state_dir / TRAINER_FILE).read_text())
    r.tokens, r.last_loss, r.elapsed0 = info["tokens"], info["last_loss"], info["elapsed_s"]
    r.best, r.vals = info["best"], info["val_losses"]
    return info["step"]


def _optimization_step(r: _Run, step: int) -> None:
    """One optimizer step on step ``step``'s examples (the epoch's ``(seed, epoch)`` shuffle).

    The loss of a micro-batch is its summed output-token cross-entropy times
    ``processes / output tokens of the global batch`` (times the accumulation steps, which
    accelerate divides out): DDP averages the processes' gradients, so the update is the exact
    token-weighted mean over the global batch."""
    cfg, acc, p, data = r.cfg, r.acc, r.plan, r.train_set
    epoch, k = divmod(step, p["steps_per_epoch"])
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data))
    step_ids = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
    per, micro = p["per_process_batch"], p["micro_batch_size"]
    ids = step_ids[acc.process_index * per:(acc.process_index + 1) * per]
    batches = [tuple(t.to(acc.device, non_blocking=True) for t in data.batch(ids[i:i + micro]))
               for i in range(0, per, micro)]
    n_tok = int(data.n_targets[step_ids].sum())
    scale = acc.num_processes * p["accumulation_steps"] / n_tok

    def loss_fn(x, y):
        s = masked_loss_sum(r.model, x, y)
        return s * scale, s.detach()

    loss_sum = optimizer_step(r.model, r.optimizers, acc, batches, loss_fn, cfg.grad_clip)
    for sch in r.schedulers:
        sch.step()
    r.loss_sum = loss_sum if r.loss_sum is None else r.loss_sum + loss_sum
    r.tok_sum += n_tok
    r.tokens += n_tok


def _log_step(r: _Run, step: int, lr: float, pbar) -> None:
    """The step record: token-weighted loss since the last record (a host sync)."""
    r.last_loss = (r.acc.reduce(r.loss_sum, "sum") / r.tok_sum).item()
    r.log({"event": "step", "step": step, "epoch": step / r.plan["steps_per_epoch"],
           "loss": r.last_loss, "lr": lr, "output_tokens": r.tokens,
           "elapsed_s": r.elapsed()})
    pbar.set_postfix(loss=f"{r.last_loss:.4f}", lr=f"{lr:.2e}")
    r.loss_sum, r.tok_sum = None, 0


def _interrupt(r: _Run, step: int, signum: int) -> None:
    """Save the state after ``step`` optimizer steps and stop."""
    _save_state(r, step)
    r.log({"event": "interrupted", "signal": signum, "step": step, "elapsed_s": r.elapsed()})
    raise Interrupted(signum, f"the full state of step {step} of {r.plan['total_steps']} "
                              f"(adapters, optimizer, schedule, RNG, data cursor, best so far) "
                              f"is in {r.out / STATE_DIR}")


# --- the loop ----------------------------------------------------------------------------------
def finetune(base_run_dir, data_dir, config_name: str, out_dir, sft_config: SFTConfig | None = None,
             progress: bool = True, device: str | None = None, accelerator=None,
             resume: bool = False) -> dict:
    """LoRA fine-tuning with instruction masking of the checkpoint in ``base_run_dir`` on
    ``data_dir/config_name`` (train split; validation split for the loss) into ``out_dir``.

    Returns the summary (also ``out_dir/done.json``): trainable_params, total_params, steps,
    best_step, best_val_loss, initial_val_loss, final_val_loss, seconds, data counts, ...;
    ``cached`` is True when ``out_dir`` already held the finished run (nothing is trained).
    ``device``: None (Accelerate's choice), "cpu" or "cuda". ``resume``: continue the
    unfinished run in ``out_dir`` (same config, base run and data) from its saved state;
    without it a saved state is an error (:func:`_check_out`); without a state the run starts
    from scratch. SIGINT/SIGTERM save the state
    at the next step boundary and raise :class:`tinytrace.interrupt.Interrupted`.
    """
    cfg = sft_config or get_sft_config("paper")
    base, out = Path(base_run_dir), Path(out_dir)
    cached = _check_cache(out, cfg, base, data_dir, config_name)
    if cached is not None:
        return cached
    check_device(device)
    state_dir = _check_out(out, resume)
    if state_dir is not None:
        _read_same_run(out / RUN_FILE, cfg, base, data_dir, config_name, "saved")
    quiet_tied_weights()
    acc = accelerator or make_accelerator(cfg, cpu=device == "cpu")
    r = _setup(cfg, acc, base, out, data_dir, config_name)
    env = environment(acc)
    total, eval_every = r.plan["total_steps"], r.plan["eval_every"]

    r.t0 = time.perf_counter()
    if state_dir is None:
        _write_run_record(r, env)
        r.vals["initial"] = _evaluate_and_keep(r, 0)
        start = 0
    else:
        start = _load_state(r, state_dir)
        r.log({"event": "resume", "step": start, "git_commit": env["git_commit"],
               "device": env["device"], "num_processes": acc.num_processes})
    pbar = tqdm(total=total, initial=start, disable=not (progress and acc.is_local_main_process),
                desc="sft", dynamic_ncols=True)
    r.model.train()
    r.t_saved = time.monotonic()
    with stop_requests() as r.stop:
        try:
            for step in range(start + 1, total + 1):  # step: optimizer steps done after this one
                lr = r.schedulers[0].get_last_lr()[0]  # the LR of this step
                _optimization_step(r, step - 1)
                pbar.update(1)
                logged = step % cfg.log_every == 0 or step == total
                if logged:
                    _log_step(r, step, lr, pbar)
                if step % eval_every == 0 or step == total:
                    val = _evaluate_and_keep(r, step)
                    pbar.set_postfix(loss=f"{r.last_loss or float('nan'):.4f}", val=f"{val:.4f}")
                if step == total:  # done.json follows: nothing left to save or stop
                    break
                signum, due = poll(acc, r.stop, r.t_saved, cfg.save_every_minutes, agree=logged)
                if signum:
                    _interrupt(r, step, signum)
                if due:
                    _save_state(r, step)
        finally:
            pbar.close()

    summary = {**r.header, "out_dir": str(out), "steps": total, "epochs": cfg.epochs,
               "train_examples": len(r.train_set), "val_examples": len(r.val_set),
               "best_step": r.best["step"], "best_val_loss": r.best["val_loss"],
               "initial_val_loss": r.vals["initial"], "final_val_loss": r.vals["last"],
               "final_train_loss": r.last_loss, "output_tokens": r.tokens,
               "seconds": r.elapsed(), "num_processes": acc.num_processes,
               "device": env["device"], "cached": False}
    r.log({"event": "end", **{k: summary[k] for k in (
        "steps", "best_step", "best_val_loss", "initial_val_loss", "final_val_loss",
        "final_train_loss", "seconds")}})
    if acc.is_main_process:
        (out / DONE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        remove_state(out)  # a finished run is a cache entry: nothing left to resume
    acc.wait_for_everyone()
    return summary
