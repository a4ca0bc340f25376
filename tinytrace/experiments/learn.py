"""Learning efficiency: tokens and seconds from scratch to a high ID exact match.

``bench_learn`` trains a scale's base model with a named :class:`Recipe` and evaluates greedy
exact match (EM, Sec. 3.3) on the base corpus's own test split at fixed fractions of the
recipe's optimizer steps; training time and evaluation time are counted apart. The run is one
trajectory: each segment resumes the previous one (``max_steps`` stops early without changing
the schedule), so the curve's last point is exactly the recipe's finished model.

Recipes are not in the paper: they are the levers measured to make the `cpu` and `gpu` scales
learn their task in the compute we have (optimizer, LR and schedule, batch, model shape, corpus
size versus epochs). The `paper` scale keeps the paper's recipe.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tinytrace.data import read_split, token_stream
from tinytrace.evaluate import SCORES, evaluate
from tinytrace.model import load_checkpoint
from tinytrace.presets import ConfigDict, Presets
from tinytrace.provenance import device_name, environment
from tinytrace.train import steps_per_epoch, train

from .cache import _Context
from .scales import get_scale

THRESHOLDS = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Recipe(ConfigDict):
    """Changes to a scale's base run: ``train`` (TrainConfig fields), ``model`` (ModelConfig
    fields over the scale's model), ``model_preset`` and ``corpus_snippets`` (None: the
    scale's)."""

    name: str
    description: str
    train: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    model_preset: str | None = None
    corpus_snippets: int | None = None

    def apply(self, scale):
        """The scale with this recipe's base run (the task and test sets are the scale's)."""
        return replace(scale, train=replace(scale.train, **self.train),
                       model=self.model_preset or scale.model,
                       model_overrides={**scale.model_overrides, **self.model},
                       corpus_snippets=self.corpus_snippets or scale.corpus_snippets)


_CPU_MUON = dict(epochs=1, batch_size=32, lr_peak=3e-3, lr_min=3e-4, optimizer="muon", muon_lr=0.01,
                 compile=True)
_GPU_MUON = dict(batch_size=128, micro_batch_size=128, lr_peak=3e-3, lr_min=3e-4, optimizer="muon",
                 muon_lr=6e-3)
RECIPES: Presets[Recipe] = Presets("recipe", {r.name: r for r in (
    Recipe("scale", "the scale's own base run, unchanged"),
    # candidates for the cpu scale: deeper, wider, higher LR
    Recipe("cpu-l4w64", "4 layers x 64 (0.20M), AdamW 1e-2 -> 1e-3, batch 8 x 128",
           model=dict(n_layer=4), corpus_snippets=100_000, train=dict(epochs=1)),
    Recipe("cpu-small", "4 layers x 128 (0.80M), AdamW 6e-3 -> 6e-4, batch 16 x 128",
           model=dict(n_layer=4, n_embd=128, n_head=8), corpus_snippets=100_000,
           train=dict(epochs=1, batch_size=16, lr_peak=6e-3, lr_min=6e-4)),
    Recipe("cpu-l2w128", "2 layers x 128 (0.41M), AdamW 6e-3 -> 6e-4, batch 16 x 128",
           model=dict(n_embd=128, n_head=8), corpus_snippets=100_000,
           train=dict(epochs=1, batch_size=16, lr_peak=6e-3, lr_min=6e-4)),
    # sized for 15 minutes of 2 threads: one epoch of fresh snippets, compiled
    Recipe("cpu-l4w64-15min", "4 layers x 64 (0.20M), AdamW 3e-3 -> 3e-4, batch 8 x 128, "
                              "200k snippets (23.7M tokens) once, compiled",
           model=dict(n_layer=4), corpus_snippets=200_000,
           train=dict(epochs=1, lr_peak=3e-3, lr_min=3e-4, compile=True)),
    # Muon pays on the CPU once a batch of 32 amortises its (emulated) bf16 Newton-Schulz
    Recipe("cpu-muon-10min", "4 layers x 64 (0.20M), Muon 0.01 (hidden matrices) + AdamW 3e-3, "
                             "batch 32 x 128, 170k snippets (20.2M tokens) once, compiled",
           model=dict(n_layer=4), corpus_snippets=170_000, train=_CPU_MUON),
    Recipe("cpu-muon-15min", "as cpu-muon-10min with 250k snippets (29.7M tokens)",
           model=dict(n_layer=4), corpus_snippets=250_000, train=_CPU_MUON),
    # the `cpu` scale's recipe: Muon at half the LR, and the loss weighs the state lists (the
    # values the execution produces) 3x over the copied snippet text
    Recipe("cpu-muon-state", "as cpu-muon-15min with Muon 0.005 and the state-list targets "
                             "weighted 3x in the loss",
           model=dict(n_layer=4), corpus_snippets=250_000,
           train={**_CPU_MUON, "muon_lr": 0.005, "state_loss_weight": 3.0}),
    # The `gpu` scale's recipe of the first H200 slot (paper task, paper model), kept under its
    # name for runs on other scales: 4x more steps than `fast` for the same tokens (batch
    # 128 x 512), Muon on the hidden matrices at twice AdamW's peak LR, the plain loss
    Recipe("gpu-muon", "batch 128 x 512, AdamW 3e-3 + Muon 6e-3 (hidden matrices), one cosine, "
                       "5% warmup, compiled",
           train={**_GPU_MUON, "state_loss_weight": 1.0}),
    # the `gpu` scale's recipe now: gpu-muon with the cpu scale's lever, the state-list targets
    # weighted 3x in the loss
    Recipe("gpu-muon-state", "gpu-muon with the state-list targets weighted 3x in the loss",
           train={**_GPU_MUON, "state_loss_weight": 3.0}),
)})


def get_recipe(name: str) -> Recipe:
    return RECIPES[name]


def first_reaching(curve: list[dict], threshold: float) -> dict | None:
    """Tokens and training seconds of the first curve point with EM >= ``threshold``."""
    for p in curve:
        if p["exact_match"] >= threshold:
            return {"tokens": p["tokens"], "seconds": p["train_seconds"], "step": p["step"]}
    return None


def bench_learn(scale: str = "cpu", recipe: str = "scale", minutes: float | None = None,
                points: int = 10, cache_dir=None, out_dir=None, threads: int | None = None,
                seed: int = 0, train_overrides: dict | None = None,
                model_overrides: dict | None = None, corpus_snippets: int | None = None,
                max_steps: int | None = None, eval_limit: int | None = None, progress: bool = True,
                report=print) -> dict:
    """Train ``scale``'s base model with ``recipe`` and measure EM at ``points`` evenly spaced
    fractions of its steps. ``minutes`` caps the training time: the run stops at the first
    evaluation point past it (the curve then ends early). ``train_overrides`` /
    ``model_overrides`` / ``corpus_snippets``: ad-hoc changes over the recipe (for a search; the
    result records them).
    ``max_steps`` ends the curve at that step (the points and the schedule still span the
    recipe), ``eval_limit`` evaluates only the first traces of the test split: both for quick
    checks of large scales. Returns the curve and the tokens and seconds to each EM in
    :data:`THRESHOLDS`."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    rec = get_recipe(recipe)
    if train_overrides or model_overrides or corpus_snippets:
        rec = replace(rec, train={**rec.train, **(train_overrides or {})},
                      model={**rec.model, **(model_overrides or {})},
                      corpus_snippets=corpus_snippets or rec.corpus_snippets)
    s = rec.apply(get_scale(scale))
    if threads:
        torch.set_num_threads(threads)
    cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "tinytrace-cache")
    ctx = _Context(s, cache_dir, seed, progress)
    t0 = time.perf_counter()
    corpus = ctx.base_corpus()
    data_s = time.perf_counter() - t0
    test = read_split(*corpus, "test")[:eval_limit]
    mc = s.model_config()
    tc = replace(s.train, name=rec.name, save_every=0)
    block = tc.block_size or mc.block_size
    total = tc.epochs * steps_per_epoch(len(token_stream(*corpus, "train")), tc.batch_size, block)
    targets = sorted({max(1, round(total * k / points)) for k in range(1, points + 1)})
    if max_steps is not None:
        targets = [t for t in targets if t < max_steps] + [min(max_steps, total)]
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="learn-", dir=cache_dir))
    if (out / "state").exists():
        raise ValueError(f"{out} already holds a run: bench learn measures a fresh one")

    load0 = os.getloadavg()[0]
    curve, train_s, eval_s = [], 0.0, 0.0
    for target in targets:
        summary = train(replace(tc, max_steps=target), mc, corpus[0], corpus[1], out,
                        resume=bool(curve), progress=progress)
        train_s += summary["seconds"]
        if not curve:  # the recipe beside the resolved config it produced
            run = json.loads((out / "run.json").read_text())
            run["recipe"] = rec.to_dict()
            (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        t1 = time.perf_counter()
        dev = "cuda" if torch.cuda.is_available() else "cpu"  # checkpoints load on the CPU
        _, ev = evaluate(load_checkpoint(out), test, device=dev, batch_size=s.eval_batch_size,
                         max_len_factor=s.max_len_factor, eos_prefix=s.eval_eos_prefix)
        eval_s += time.perf_counter() - t1
        point = {"step": summary["step"], "fraction": round(summary["step"] / total, 4),
                 "tokens": summary["tokens"], "train_seconds": round(train_s, 1),
                 "loss": summary["loss"]}
        point.update({k: ev[k] for k in SCORES})
        curve.append(point)
        report(_format_point(point))
        if minutes is not None and train_s >= 60 * minutes:
            break
    env = environment()
    result = {
        "benchmark": "learn", "scale": s.name, "recipe": rec.to_dict(),
        "train": tc.to_dict(), "model": mc.to_dict(), "params": summary["params"],
        "total_steps": total, "tokens_per_step": tc.batch_size * block,
        "eval_n": len(test), "eos_prefix": s.eval_eos_prefix, "curve": curve,
        **{f"to_{round(100 * t)}": first_reaching(curve, t) for t in THRESHOLDS},
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "data_seconds": round(data_s, 1), "tokens_per_s": round(curve[-1]["tokens"] / max(train_s, 1e-9)),
        "finished": curve[-1]["step"] == total, "minutes": minutes,
        "device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
        "torch_threads": torch.get_num_threads(), "load_average": [round(load0, 2),
                                                                   round(os.getloadavg()[0], 2)],
        "git_commit": env["git_commit"], "torch": torch.__version__,
        "python": env["python"], "run_dir": str(out),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return result


def _format_point(p: dict) -> str:
    return (f"step {p['step']:>7,} ({p['fraction']:>5.0%})  tokens {p['tokens']:>12,}  "
            f"train {p['train_seconds']:>7.1f} s  loss {p['loss']:.4f}  EM {p['exact_match']:.3f}  "
            f"step EM {p['step_em_tf']:.3f}  state acc {p['state_token_acc']:.3f}")
