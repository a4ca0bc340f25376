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
  form (paper model, r = 8: 565,248 trainable; the paper reports 2.2M, see notes/issue4-sft.md).
- Optimizer and schedule (G.1): AdamW (0.9, 0.95), weight decay 0.1 on the adapter matrices,
  peak LR 1e-3, linear warmup over 10% of the steps, cosine to 10% of the peak. The warmup
  starts from the floor (10% of the peak), as the pre-training schedule :func:`train.lr_at`
  does; G.1 does not say where it starts. Gradient clipping 1.0 (not stated; as pre-training).
- Validation: the same masked loss on the first ``val_examples`` validation examples, before
  training and every ``eval_every_frac`` (2.5%) of the steps; each new best is merged into the
  base weights (``merge_and_unload`` on a copy) and saved with :func:`model.save_checkpoint`,
  so ``load_checkpoint(out_dir)`` is a plain GPT: the best checkpoint (step 0 = the base
  weights if fine-tuning never improves the validation loss).
- Output folder: ``sft.json`` (resolved config, base run, data, plan, environment),
  ``log.jsonl``, ``model.safetensors`` + ``config.json`` (best merged model) and ``done.json``
  (the summary, written last). A folder with ``done.json`` is returned as is (a cache); an
  unfinished one is started again from scratch (no resume: SFT runs are short).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinytrace.lang import tokenizer as tk
from tinytrace.presets import ConfigDict, Presets

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
    lora_dropout: float = 0.0
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
    mixed_precision: str = "auto"  # read by train.make_accelerator: bf16 on CUDA, fp32 elsewhere

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
        if self.lr <= 0 or not 0 <= self.lr_min_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= lr_min_ratio <= 1, got {self.lr}, {self.lr_min_ratio}")
        unknown = set(self.target_modules) - set(LORA_TARGETS)
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {LORA_TARGETS}, "
                             f"got {self.target_modules}")


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
    """LR of optimizer step ``step``: one phase of :func:`train.lr_at` from/to ``lr * lr_min_ratio``."""
    from tinytrace.train import lr_at as schedule

    return schedule(step, total_steps, lr_peak=cfg.lr, lr_min=cfg.lr * cfg.lr_min_ratio,
                    warmup_frac=cfg.warmup_frac, phase1_frac=1.0)


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
        from tinytrace.data import token_stream

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
    only the adapters (and the Linear biases, if any) stay trainable."""
    from peft import LoraConfig, get_peft_model

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


@torch.no_grad()
def validation_loss(model, examples: ExampleSet, micro: int, accelerator) -> float:
    """Token-weighted masked loss over all of ``examples``, split over processes."""
    mine = np.arange(len(examples))[accelerator.process_index::accelerator.num_processes]
    tot = torch.zeros((), device=accelerator.device)
    cnt = torch.zeros((), device=accelerator.device)
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), micro):
        x, y = (t.to(accelerator.device) for t in examples.batch(mine[i:i + micro]))
        with accelerator.autocast():
            tot += masked_loss_sum(model, x, y)
        cnt += (y != -100).sum()
    model.train(was_training)
    tot, cnt = accelerator.reduce(tot, "sum"), accelerator.reduce(cnt, "sum")
    return (tot / cnt.clamp(min=1)).item()


# --- the loop ----------------------------------------------------------------------------------
def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _optimizer(model, cfg: SFTConfig, device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)


def _check_cache(out: Path, cfg: SFTConfig, base: Path, data_dir, config_name: str) -> dict | None:
    if not (out / DONE_FILE).exists():
        return None
    summary = json.loads((out / DONE_FILE).read_text())
    # folder names, not absolute paths: a moved cache stays valid
    want = {"sft": cfg.to_dict(), "base_run": base.resolve().name,
            "data": [Path(data_dir).resolve().name, config_name]}
    data = summary.get("data", {})
    got = {"sft": summary.get("sft"), "base_run": Path(summary.get("base_run", "")).name,
           "data": [Path(data.get("dir", "")).name, data.get("config")]}
    if got != want:
        bad = [k for k in want if got[k] != want[k]]
        raise ValueError(f"{out} holds a finished fine-tuning run with another {', '.join(bad)}; "
                         f"choose another out_dir")
    return {**summary, "cached": True}


def finetune(base_run_dir, data_dir, config_name: str, out_dir, sft_config: SFTConfig | None = None,
             progress: bool = True, device: str | None = None, accelerator=None) -> dict:
    """LoRA fine-tuning with instruction masking of the checkpoint in ``base_run_dir`` on
    ``data_dir/config_name`` (train split; validation split for the loss) into ``out_dir``.

    Returns the summary (also ``out_dir/done.json``): trainable_params, total_params, steps,
    best_step, best_val_loss, initial_val_loss, final_val_loss, seconds, data counts, ...;
    ``cached`` is True when ``out_dir`` already held the finished run (nothing is trained).
    ``device``: None (Accelerate's choice), "cpu" or "cuda".
    """
    from tqdm.auto import tqdm

    from tinytrace.model import load_checkpoint, save_checkpoint
    from tinytrace.provenance import environment
    from tinytrace.train import batch_plan, make_accelerator

    cfg = sft_config or get_sft_config("paper")
    base, out = Path(base_run_dir), Path(out_dir)
    cached = _check_cache(out, cfg, base, data_dir, config_name)
    if cached is not None:
        return cached
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, cpu or cuda, got {device!r}")

    acc = accelerator or make_accelerator(cfg, cpu=device == "cpu")
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    per, micro, accum = batch_plan(cfg.batch_size, cfg.micro_batch_size, world)

    from accelerate.utils import set_seed

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
    spe = len(train_set) // cfg.batch_size  # the last partial batch of an epoch is dropped
    total = cfg.epochs * spe
    eval_every = max(1, round(cfg.eval_every_frac * total))

    peft_model = apply_lora(model, cfg)
    trainable, total_params = count_params(peft_model)
    optimizer = _optimizer(peft_model, cfg, acc.device)
    net, optimizer = acc.prepare(peft_model, optimizer)
    raw = acc.unwrap_model(net)

    env = environment(acc)
    plan = {"steps_per_epoch": spe, "total_steps": total, "eval_every": eval_every,
            "block_size": block, "per_process_batch": per, "micro_batch_size": micro,
            "accumulation_steps": accum}
    data_info = {"dir": str(Path(data_dir).resolve()), "config": config_name,
                 "train": train_set.stats, "validation": val_set.stats}
    header = {"sft": cfg.to_dict(), "base_run": str(base.resolve()), "model": mc.to_dict(),
              "data": data_info, "plan": plan, "trainable_params": trainable,
              "total_params": total_params, "base_params": base_params, "seed": cfg.seed}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (DONE_FILE, "log.jsonl"):
            (out / stale).unlink(missing_ok=True)
        run = {**header, "env": env, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
        _append_jsonl(out / "log.jsonl", {"event": "start", **plan, "trainable_params": trainable,
                                          "train_examples": len(train_set),
                                          "val_examples": len(val_set),
                                          "git_commit": env["git_commit"], "device": env["device"],
                                          "num_processes": world, "seed": cfg.seed})

    t0 = time.perf_counter()
    best = {"step": None, "val_loss": math.inf}

    def evaluate_and_keep(step: int) -> float:
        val = validation_loss(raw, val_set, micro, acc)
        is_best = val < best["val_loss"]
        if is_best:
            best.update(step=step, val_loss=val)
            if main:
                save_checkpoint(merged_copy(raw), out, extra={
                    "sft": cfg.to_dict(), "base_run": str(base.resolve()), "step": step,
                    "val_loss": val, "trainable_params": trainable,
                    "data": {"config": config_name, "train_examples": len(train_set)}})
        if main:
            _append_jsonl(out / "log.jsonl", {"event": "eval", "step": step, "val_loss": val,
                                              "best": is_best, "best_val_loss": best["val_loss"],
                                              "elapsed_s": time.perf_counter() - t0})
        acc.wait_for_everyone()
        return val

    initial_val = last_val = evaluate_and_keep(0)
    pbar = tqdm(total=total, disable=not (progress and acc.is_local_main_process), desc="sft",
                dynamic_ncols=True)
    net.train()
    loss_sum = torch.zeros((), device=acc.device)  # this process's share, summed at log steps
    tok_sum, last_loss, tokens_seen = 0, None, 0
    for step in range(total):
        epoch, k = divmod(step, spe)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_set))
        step_ids = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        ids = step_ids[rank * per:(rank + 1) * per]
        batches = [train_set.batch(ids[i:i + micro]) for i in range(0, per, micro)]
        # output tokens of the whole global batch: DDP averages the processes' gradients, so
        # scaling by world / n_tok makes the update the exact token-weighted mean
        n_tok = int(train_set.n_targets[step_ids].sum())
        lr = lr_at(step, total, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        for j, (x, y) in enumerate(batches):
            x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
            # DDP: all-reduce the gradients once, on the last micro-batch
            with acc.no_sync(net) if j < len(batches) - 1 else nullcontext():
                s = masked_loss_sum(net, x, y)
                acc.backward(s * (world / n_tok))
            loss_sum += s.detach()
        tok_sum += n_tok
        tokens_seen += n_tok
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        pbar.update(1)
        if done % cfg.log_every == 0 or done == total:
            last_loss = (acc.reduce(loss_sum, "sum") / tok_sum).item()
            if main:
                _append_jsonl(out / "log.jsonl", {"event": "step", "step": done, "epoch": done / spe,
                                                  "loss": last_loss, "lr": lr,
                                                  "output_tokens": tokens_seen,
                                                  "elapsed_s": time.perf_counter() - t0})
            pbar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            loss_sum.zero_()
            tok_sum = 0
        if done % eval_every == 0 or done == total:
            last_val = evaluate_and_keep(done)
            pbar.set_postfix(loss=f"{last_loss or float('nan'):.4f}", val=f"{last_val:.4f}")
    pbar.close()

    seconds = time.perf_counter() - t0
    summary = {**header, "out_dir": str(out), "steps": total, "epochs": cfg.epochs,
               "train_examples": len(train_set), "val_examples": len(val_set),
               "best_step": best["step"], "best_val_loss": best["val_loss"],
               "initial_val_loss": initial_val, "final_val_loss": last_val,
               "final_train_loss": last_loss, "output_tokens": tokens_seen, "seconds": seconds,
               "num_processes": world, "device": env["device"], "cached": False}
    if main:
        _append_jsonl(out / "log.jsonl", {"event": "end", **{k: summary[k] for k in (
            "steps", "best_step", "best_val_loss", "initial_val_loss", "final_val_loss",
            "final_train_loss", "seconds")}})
        (out / DONE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    acc.wait_for_everyone()
    return summary


# --- command line ------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("sft", help="LoRA fine-tuning with instruction masking",
                       description="Fine-tune a trained run with LoRA and instruction masking "
                                   "(paper Sec. 4.4, App. G.1); the best merged model goes to --out.")
    p.add_argument("--base", required=True, help="run folder of the pre-trained model")
    p.add_argument("--data", required=True, help="dataset folder (tinytrace data build --out)")
    p.add_argument("--config", required=True, help="dataset config name inside --data")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(SFT_PRESETS)}")
    for flag, typ in (("rank", int), ("alpha", float), ("lr", float), ("epochs", int),
                      ("data-size", int), ("batch-size", int), ("micro-batch-size", int),
                      ("block-size", int), ("val-examples", int), ("seed", int)):
        p.add_argument(f"--{flag}", type=typ)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=handler)


def handler(args) -> int:
    keys = ("rank", "alpha", "lr", "epochs", "data_size", "batch_size", "micro_batch_size",
            "block_size", "val_examples", "seed")
    cfg = get_sft_config(args.preset, **{k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    summary = finetune(args.base, args.data, args.config, args.out, cfg,
                       progress=not args.no_progress, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":  # pragma: no cover: ``python -m tinytrace.sft --base ... --out ...``
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tinytrace.sft")
    add_cli(parser.add_subparsers(dest="command", required=True))
    cli_args = parser.parse_args(["sft", *sys.argv[1:]])
    sys.exit(cli_args.func(cli_args))
