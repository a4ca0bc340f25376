"""tinytrace.train: schedule, windows, resume, CLI, 2-process launch, and a real learning run."""
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinytrace import train as T
from tinytrace.cli import main
from tinytrace.data import build_preset, load, token_stream
from tinytrace.evaluate import evaluate
from tinytrace.model import GPT, get_model_config, load_checkpoint

# Straight-line snippets with few variables and small values: learnable in seconds on a CPU.
SIMPLE = dict(min_statements=2, max_statements=3, max_depth=0, variables="ab", max_literal=4,
              value_range=(-4, 4))
REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    build_preset("base", d, 600, test_size=32, validation_size=32, workers=1, progress=False,
                 generator_overrides=SIMPLE, config_name="simple")
    return d


def _tiny(**kw):
    return get_model_config("tiny", block_size=32, **kw)


def _cfg(**kw):
    base = dict(epochs=4, batch_size=4, micro_batch_size=2, block_size=32, log_every=1,
                val_windows=0, lr_peak=3e-3, lr_min=3e-4)
    base.update(kw)
    return T.get_train_config("smoke", **base)


def _optimizers(model, tc):
    return T.make_optimizers(model, "cpu", tc.lr_peak, tc.betas, tc.eps, tc.weight_decay,
                             tc.optimizer, tc.muon_lr, tc.muon_momentum)


def _weights(run):
    return {k: v.clone() for k, v in load_checkpoint(run).state_dict().items()}


def _log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


# --- schedule ----------------------------------------------------------------------------------
def test_schedule_key_steps():
    n = 1000  # phase 1: steps 0..499 (warmup 0..49), phase 2: 500..999 (warmup 500..549)
    lr = lambda s: T.lr_at(s, n)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(25) == pytest.approx(5.5e-4)  # halfway up the warmup
    assert lr(50) == pytest.approx(1e-3)  # end of warmup: the peak
    assert lr(275) == pytest.approx(5.5e-4)  # middle of the cosine
    assert lr(499) == pytest.approx(1e-4, rel=1e-3)  # end of phase 1: back to the start
    assert lr(500) == pytest.approx(1e-5)  # phase 2: everything x0.1
    assert lr(550) == pytest.approx(1e-4)
    assert lr(999) == pytest.approx(1e-5, rel=1e-3)
    assert lr(1000) == pytest.approx(1e-5)
    assert max(lr(s) for s in range(n)) == pytest.approx(1e-3)
    # a single phase, and the LambdaLR that drives the optimizer
    assert T.lr_at(100, 100, phase1_frac=1.0) == pytest.approx(1e-4)
    tc = T.get_train_config("paper")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr_peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(n, **tc.lr_schedule))
    for s in range(n):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr(s))
        opt.step()
        sched.step()


def test_epoch_length_and_batch_plan():
    # paper: 933M tokens, 512 x 512 tokens per step -> 3559 steps per epoch
    assert T.steps_per_epoch(933_000_000, 512, 512) == 3559
    assert T.steps_per_epoch(10_000, 4, 32) == 78
    assert T.steps_per_epoch(10, 512, 512) == 1
    assert T.batch_plan(512, 64, 4) == (128, 64, 2)
    assert T.batch_plan(512, None, 1) == (512, 512, 1)
    assert T.batch_plan(8, 64, 2) == (4, 4, 1)
    with pytest.raises(ValueError):
        T.batch_plan(6, None, 4)
    with pytest.raises(ValueError):
        T.batch_plan(12, 5, 1)
    with pytest.raises(ValueError):
        T.TrainConfig(lr_min=1e-2, lr_peak=1e-3)


def test_window_sampling():
    tokens = np.arange(1000, dtype=np.int64).astype(np.uint8)  # wraps, content is checked below
    s = T.WindowSampler(tokens, block_size=16, batch_size=8, seed=3)
    a, b = s.offsets(5), s.offsets(5)
    assert np.array_equal(a, b)  # reproducible from (seed, step)
    assert not np.array_equal(s.offsets(5), s.offsets(6))
    assert not np.array_equal(a, T.WindowSampler(tokens, 16, 8, seed=4).offsets(5))
    offs = np.concatenate([s.offsets(i) for i in range(500)])
    assert offs.min() >= 0 and offs.max() <= len(tokens) - 17  # window + 1 target fit
    assert offs.max() > len(tokens) - 60  # the whole stream is reachable
    # ranks: disjoint slices of one global draw, so the data does not depend on the world size
    r0, r1 = s.local_offsets(5, 0, 2), s.local_offsets(5, 1, 2)
    assert np.array_equal(np.concatenate([r0, r1]), a)
    x, y = s.windows(a)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    for i, o in enumerate(a):
        assert x[i].tolist() == tokens[o:o + 16].tolist()
        assert y[i].tolist() == tokens[o + 1:o + 17].tolist()
    with pytest.raises(ValueError):
        T.WindowSampler(tokens[:10], block_size=16, batch_size=1)


# --- runs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_equivalence(data_dir, tmp_path, optimizer):
    mc = _tiny(dropout=0.1)  # dropout: the resumed run also needs the RNG state
    cfg = lambda **kw: _cfg(optimizer=optimizer, **kw)  # noqa: E731
    full, half = tmp_path / "full", tmp_path / "half"
    s_full = T.train(cfg(max_steps=8), mc, data_dir, "simple", full, progress=False)
    s1 = T.train(cfg(max_steps=4), mc, data_dir, "simple", half, progress=False)
    assert s1["step"] == 4 and load_checkpoint(half) is not None
    with pytest.raises(ValueError, match="already holds a run"):
        T.train(cfg(max_steps=8), mc, data_dir, "simple", half, progress=False)
    with pytest.raises(ValueError, match="lr_peak"):
        T.train(cfg(max_steps=8, lr_peak=1e-2), mc, data_dir, "simple", half, resume=True)
    other = "adamw" if optimizer == "muon" else "muon"
    with pytest.raises(ValueError, match="optimizer"):
        T.train(_cfg(max_steps=8, optimizer=other), mc, data_dir, "simple", half, resume=True)
    s2 = T.train(cfg(max_steps=8), mc, data_dir, "simple", half, resume=True, progress=False)
    assert s2["start_step"] == 4 and s2["step"] == 8
    assert s2["loss"] == pytest.approx(s_full["loss"], rel=1e-5)
    wf, wh = _weights(full), _weights(half)
    assert wf.keys() == wh.keys()
    for k in wf:
        torch.testing.assert_close(wh[k], wf[k], rtol=1e-5, atol=1e-6)
    losses = lambda run: [r["loss"] for r in _log(run) if r["event"] == "step"]  # noqa: E731
    assert losses(half) == pytest.approx(losses(full), rel=1e-5)
    run = json.loads((half / "run.json").read_text())
    assert run["resumes"][0]["step"] == 4 and run["seed"] == 0
    assert {"torch", "accelerate"} <= set(run["env"]["libraries"]) and "git_commit" in run["env"]
    trainer = json.loads((half / "state" / "trainer.json").read_text())
    assert trainer["step"] == 8
    assert json.loads((half / "config.json").read_text())["step"] == 8


def test_resume_refuses_a_changed_or_unknown_saved_field(data_dir, tmp_path, capsys):
    """The resume check reads run.json with the strict from_dict of each config: a saved
    trajectory or model field that differs from the new run's, or a field this code does not
    know, is refused with an error naming it (in train() and in the CLI); nothing is trained."""
    mc, out = _tiny(), tmp_path / "run"
    T.train(_cfg(max_steps=2), mc, data_dir, "simple", out, progress=False)
    original = json.loads((out / "run.json").read_text())
    log_before = (out / "log.jsonl").read_text()

    def resume_with(section, key, value):
        run = json.loads(json.dumps(original))
        run[section][key] = value
        (out / "run.json").write_text(json.dumps(run))
        return lambda: T.train(_cfg(max_steps=4), mc, data_dir, "simple", out, resume=True,
                               progress=False)

    with pytest.raises(ValueError, match=r"cannot resume .*: differs from the saved run in "
                                         r"seed 0 \(saved 1\)$"):
        resume_with("train", "seed", 1)()
    with pytest.raises(ValueError, match=r"cannot resume .*: .* in model n_embd 64 \(saved 32\)$"):
        resume_with("model", "n_embd", 32)()
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\): warmup_steps"):
        resume_with("train", "warmup_steps", 5)()
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\): rope"):
        resume_with("model", "rope", True)()
    # the CLI builds its configs from the same strict read
    rc = main(["train", "--data", str(data_dir), "--config", "simple", "--out", str(out),
               "--resume", "--max-steps", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown ModelConfig field(s): rope" in err and len(err.strip().splitlines()) == 1
    assert (out / "log.jsonl").read_text() == log_before  # refused before anything ran
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 2
    (out / "run.json").write_text(json.dumps(original))
    s = T.train(_cfg(max_steps=4), mc, data_dir, "simple", out, resume=True, progress=False)
    assert (s["start_step"], s["step"]) == (2, 4)


def test_muon_takes_the_blocks_matrices():
    """Muon gets exactly the 2-D weights of the blocks' Linear layers; embeddings, gains, the
    position tables and the tied head stay with AdamW; nothing is left out or given twice."""
    for pe in ("ape", "rpe", "rpb"):
        model = GPT(_tiny(pe=pe))
        adamw, muon = _optimizers(model, _cfg(optimizer="muon", muon_lr=0.05))
        assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
        names = {id(p): n for n, p in model.named_parameters()}
        in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
        in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
        assert in_muon == {n for n in names.values()
                           if n.startswith("transformer.h.") and n.split(".")[-2] in
                           ("c_attn", "c_proj", "c_fc")}
        assert not in_muon & in_adamw and in_muon | in_adamw == set(names.values())
        assert muon.param_groups[0]["lr"] == 0.05
    assert len(_optimizers(GPT(_tiny()), _cfg())) == 1  # adamw: one optimizer
    with pytest.raises(ValueError, match="optimizer must be"):
        _cfg(optimizer="sgd")


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_compiled_optimizer_steps_follow_the_schedule_without_recompiling(optimizer):
    """Compiled AdamW (and Muon) steps give the eager steps' weights while the schedule changes
    the learning rate at every step, compiling once (the rates are tensors the scheduler fills
    in place)."""
    torch._dynamo.reset()
    tc = _cfg(optimizer=optimizer, muon_lr=0.01)
    x = torch.randint(0, 40, (4, 33))
    models, scheds, opts = [], [], []
    for compiled in (False, True):
        torch.manual_seed(0)
        models.append(GPT(_tiny()))
        opts.append(T.make_optimizers(models[-1], "cpu", tc.lr_peak, tc.betas, tc.eps,
                                      tc.weight_decay, optimizer, tc.muon_lr, compile=compiled))
        scheds.append(T.lr_schedulers(opts[-1], 6, tc.lr_schedule))
    assert isinstance(opts[1][-1].param_groups[0]["lr"], torch.Tensor)
    assert opts[1][0].defaults["fused"] is None  # plain AdamW: Inductor fuses it
    for step in range(6):
        for model, os_, ss in zip(models, opts, scheds):
            model(x[:, :-1], x[:, 1:])[1].backward()
            for o in os_:
                o.step()
                o.zero_grad()
            for s in ss:
                s.step()
        if step == 1:
            graphs = _graphs()  # both optimizers compiled, their state created
    assert graphs > 0 and _graphs() == graphs
    assert [float(g["lr"]) for o in opts[1] for g in o.param_groups] == pytest.approx(
        [g["lr"] for o in opts[0] for g in o.param_groups])
    torch.manual_seed(0)
    init = GPT(_tiny())
    for a, b, p0 in zip(models[0].parameters(), models[1].parameters(), init.parameters()):
        # the updates agree: AdamW's to float rounding, Muon's to its bf16 rounding (next test)
        tol = 1e-4 if optimizer == "adamw" else 0.25
        assert (b - a).norm() <= tol * (a - p0).norm() and (a - p0).norm() > 0


def test_compiled_muon_step_is_as_close_to_fp32_as_the_eager_one(monkeypatch):
    """torch's Muon runs Newton-Schulz in bf16, so compiled and eager steps differ by its
    rounding (5-10% of an update here): each is measured against the same step with the
    iterations in fp32, and the compiled one must be no farther from it."""
    from torch.optim import _muon

    def ns_fp32(grad, coefficients, steps, eps):
        a, b, c = coefficients
        x = grad.float().T if grad.size(0) > grad.size(1) else grad.float()
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.T if grad.size(0) > grad.size(1) else x

    torch._dynamo.reset()
    x = torch.randint(0, 40, (4, 33))
    updates = {}
    for kind in ("eager", "compiled", "fp32"):
        if kind == "fp32":
            monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz", ns_fp32)
        torch.manual_seed(0)
        model = GPT(_tiny())
        muon = T.make_optimizers(model, "cpu", 3e-3, (0.9, 0.95), 1e-8, 0.1, "muon", 0.01,
                                 compile=kind == "compiled")[1]
        before = [p.detach().clone() for g in muon.param_groups for p in g["params"]]
        model(x[:, :-1], x[:, 1:])[1].backward()
        graphs = _graphs()
        muon.step()
        assert (_graphs() > graphs) == (kind == "compiled")  # compiled, not fallen back to eager
        after = [p.detach() for g in muon.param_groups for p in g["params"]]
        updates[kind] = [a - b for a, b in zip(after, before)]
        monkeypatch.undo()
    for e, c, f in zip(updates["eager"], updates["compiled"], updates["fp32"]):
        assert (c - f).norm() <= 1.25 * (e - f).norm() and (e - f).norm() < 0.2 * f.norm()


def test_compiled_optimizer_resumes_with_tensor_rates(data_dir, tmp_path, monkeypatch):
    """A resumed run ends where the uninterrupted run does, compiling once; a run saved with
    eager steps (float rates, which loading restores as saved) resumes with compiled steps that
    read tensor rates all the same."""
    from tinytrace.train import loop

    torch._dynamo.reset()
    mc = _tiny()
    cfg = lambda **kw: _cfg(**{"optimizer": "muon", "compile_optimizer": True, **kw})  # noqa: E731
    full, half = tmp_path / "full", tmp_path / "half"
    T.train(cfg(max_steps=8), mc, data_dir, "simple", full, progress=False)
    T.train(cfg(max_steps=4), mc, data_dir, "simple", half, progress=False)
    before, rates = _graphs(), []
    step = loop._optimization_step
    monkeypatch.setattr(loop, "_optimization_step", lambda r: rates.extend(
        type(g["lr"]) for o in r.optimizers for g in o.param_groups) or step(r))
    T.train(cfg(max_steps=8), mc, data_dir, "simple", half, resume=True, progress=False)
    assert rates and set(rates) == {torch.Tensor}  # every resumed step reads tensor rates
    assert 1 <= _graphs() - before <= 2  # one graph per optimizer, not one per rate
    wf, wh = _weights(full), _weights(half)
    for k in wf:
        torch.testing.assert_close(wh[k], wf[k], rtol=1e-5, atol=1e-6)
    T.train(cfg(max_steps=4, compile_optimizer=False), mc, data_dir, "simple", tmp_path / "eager",
            progress=False)
    rates.clear()
    T.train(cfg(max_steps=8), mc, data_dir, "simple", tmp_path / "eager", resume=True, progress=False)
    assert rates and set(rates) == {torch.Tensor}
    from tinytrace.experiments.cache import settings

    assert "compile_optimizer" not in settings(_cfg())  # runs cached before the field keep keys


def test_state_targets_and_the_state_weighted_loss():
    """The targets in a state list (after a ``$`` on the same line, the closing line break
    included) and nothing else are marked; weight 1 is the plain mean cross-entropy, a higher
    weight moves the backpropagated loss toward the state targets' mean, and the reported value
    stays the plain mean."""
    from tinytrace.lang import tokenizer as tk
    from tinytrace.train.common import lm_loss, state_targets

    text = "b = 4\n#STEP\n@b = 4$\n#STEP\nb = 4\n@^$b?4\n\n"
    ids = tk.encode(text)
    marked = state_targets(torch.tensor([ids]))[0].tolist()
    got = [tk.decode([ids[t + 1]]) for t in range(len(ids) - 1) if marked[t]]
    assert got == ["\n#STEP\n", "b", "?", "4", "\n\n"]
    assert not marked[-1]  # the last position's target lies outside the window
    with pytest.raises(ValueError, match="state_loss_weight"):
        _cfg(state_loss_weight=0)
    # a trajectory field; at 1 (the objective before the field) out of the cache key
    from tinytrace.experiments.cache import settings
    assert "state_loss_weight" in T.FIXED_FIELDS
    assert "state_loss_weight" not in settings(_cfg())
    assert settings(_cfg(state_loss_weight=3))["state_loss_weight"] == 3

    torch.manual_seed(0)
    model = GPT(get_model_config("tiny", block_size=len(ids)))
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    with torch.no_grad():
        plain, plain_report = lm_loss(model, x, y)
        logits, _ = model(x)
        ce = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="none")
        m = state_targets(x)[0]
        for w in (1.0, 3.0, 50.0):
            loss, report = lm_loss(model, x, y, w)
            expected = (ce[~m].sum() + w * ce[m].sum()) / ((~m).sum() + w * m.sum())
            assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
            assert report.item() == pytest.approx(plain_report.item(), rel=1e-5)
        assert plain.item() == pytest.approx(ce.mean().item(), rel=1e-5)


def test_compile_failure_falls_back_to_eager(data_dir, tmp_path, monkeypatch):
    """A compiler error at the first step must not cost the run: it trains eagerly, on the
    same trajectory (accelerate's micro-batch counter restarts the step), and logs why."""
    eager = T.train(_cfg(max_steps=3), _tiny(), data_dir, "simple", tmp_path / "eager",
                    progress=False)

    def broken_compile(model, **kw):
        def fwd(*a, **k):
            model(*a, **k)  # part of the work is done before the "compiler" fails
            raise RuntimeError("inductor exploded")
        return fwd

    monkeypatch.setattr(torch, "compile", broken_compile)
    out = tmp_path / "compiled"
    s = T.train(_cfg(max_steps=3, compile=True), _tiny(), data_dir, "simple", out, progress=False)
    assert s["step"] == 3 and s["loss"] == pytest.approx(eager["loss"], rel=1e-6)
    failed = [r for r in _log(out) if r["event"] == "compile_failed"]
    assert len(failed) == 1 and "inductor exploded" in failed[0]["error"]


def test_compiled_cpu_runs_are_bit_identical_and_the_flag_is_restored(data_dir, tmp_path):
    """On a CPU a run uses deterministic algorithms by default: two compiled runs on 2 threads
    give the same weights bit for bit (without it the compiled backward's scatter-adds race and
    the weights differ in their last bits). The flag is the run's only: restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = lambda **kw: _cfg(epochs=1, max_steps=30, batch_size=32, micro_batch_size=None,  # noqa: E731
                                compile=True, **kw)
        for name in ("a", "b"):
            T.train(cfg(), _tiny(), data_dir, "simple", tmp_path / name, progress=False)
        a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not [r for r in _log(tmp_path / "a") if r["event"] == "compile_failed"]
        T.train(cfg(deterministic=False), _tiny(), data_dir, "simple", tmp_path / "c", progress=False)
    finally:
        torch.set_num_threads(threads)
    env = lambda run: json.loads((tmp_path / run / "run.json").read_text())["env"]  # noqa: E731
    assert env("a")["deterministic_algorithms"] and not env("c")["deterministic_algorithms"]
    assert not torch.are_deterministic_algorithms_enabled()
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match="deterministic"):
            _cfg(deterministic=bad)
    from tinytrace.experiments.cache import settings
    assert settings(cfg()) == settings(cfg(deterministic=True))  # not in the cache key


def test_epochs_callbacks_validation(data_dir, tmp_path):
    n_tokens = len(token_stream(data_dir, "simple", "train"))
    tc = _cfg(epochs=2, batch_size=32, micro_batch_size=None, val_windows=8, log_every=5)
    spe = T.steps_per_epoch(n_tokens, 32, 32)
    seen = []

    def cb(epoch, model, accelerator, record):
        assert not model.training and "val_loss" in record
        seen.append((epoch, record["step"]))
        return {"my_metric": epoch * 10}

    out = tmp_path / "run"
    s = T.train(tc, _tiny(), data_dir, "simple", out, callbacks=[cb], progress=False)
    assert seen == [(1, spe), (2, 2 * spe)]
    assert s["step"] == s["total_steps"] == 2 * spe
    epochs = [r for r in _log(out) if r["event"] == "epoch"]
    assert [r["my_metric"] for r in epochs] == [10, 20]
    assert all(math.isfinite(r["val_loss"]) for r in epochs)
    assert epochs[1]["val_loss"] < epochs[0]["val_loss"] + 0.5
    steps = [r for r in _log(out) if r["event"] == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns something
    assert all(r["tokens_per_s"] > 0 for r in steps)
    meta = json.loads((out / "config.json").read_text())
    assert meta["epoch"] == 2 and meta["step"] == 2 * spe
    for k in (1, 2):  # each epoch's weights stay; the epoch-2 ones are the final model
        assert json.loads((out / f"epoch-{k}" / "config.json").read_text())["step"] == k * spe
    final, e1, e2 = _weights(out), _weights(out / "epoch-1"), _weights(out / "epoch-2")
    assert all(torch.equal(e2[k], final[k]) for k in final)
    assert not all(torch.equal(e1[k], final[k]) for k in final)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["epoch-1", "epoch-2", "state"]


def test_keep_epoch_weights_off_and_out_of_the_cache_key(data_dir, tmp_path):
    """keep_epoch_weights=False keeps no epoch folders; the field changes no result, so it is
    neither a trajectory field nor part of an experiment cache's run key."""
    from dataclasses import replace

    from tinytrace.experiments.cache import settings

    tc = _cfg(epochs=1, batch_size=32, micro_batch_size=None, keep_epoch_weights=False)
    out = tmp_path / "run"
    T.train(tc, _tiny(), data_dir, "simple", out, progress=False)
    assert (out / "model.safetensors").exists() and not list(out.glob("epoch-*"))
    assert "keep_epoch_weights" not in T.FIXED_FIELDS
    assert settings(tc) == settings(replace(tc, keep_epoch_weights=True))


def test_cli_smoke(data_dir, tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "tinytrace", "train", "--data", str(data_dir), "--config",
            "simple", "--out", str(out)]
    args = ["--model", "tiny", "--batch-size", "4", "--block-size", "32", "--no-progress",
            "--state-loss-weight", "2"]
    r = subprocess.run(base + args + ["--max-steps", "3"], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 3
    assert json.loads((out / "run.json").read_text())["train"]["state_loss_weight"] == 2
    for f in ("model.safetensors", "config.json", "log.jsonl", "run.json", "state/trainer.json"):
        assert (out / f).exists(), f
    assert load_checkpoint(out).config.n_layer == get_model_config("tiny").n_layer
    assert [r["step"] for r in _log(out) if r["event"] == "step"] == [3]  # paper preset: every 10
    # --resume continues with the saved configuration
    r = subprocess.run(base + ["--resume", "--max-steps", "5", "--no-progress"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["start_step"], summary["step"]) == (3, 5)


def test_cli_resume_accepts_the_same_command_and_names_a_conflict(data_dir, tmp_path, capsys):
    """The command that started a run, rerun with --resume (and a later --max-steps), continues
    it: values equal to the saved run's are accepted. A conflicting value is refused with one
    line naming the field and both values, before anything runs."""
    out = tmp_path / "run"
    cmd = ["train", "--data", str(data_dir), "--config", "simple", "--out", str(out),
           "--model", "tiny", "--model-arg", "block_size=32", "--train-preset", "smoke",
           "--batch-size", "4", "--block-size", "32", "--lr", "0.003", "--no-progress"]
    assert main(cmd + ["--max-steps", "2"]) == 0
    assert main(cmd + ["--max-steps", "3", "--resume"]) == 0
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 3
    capsys.readouterr()
    log_before = (out / "log.jsonl").read_text()
    for extra, says in ((["--model", "small"], "model n_layer"),
                        (["--model-arg", "pe=rpb"], "model pe 'rpb' (saved 'ape')"),
                        (["--lr", "0.01"], "lr_peak 0.01 (saved 0.003)"),
                        (["--train-preset", "cpu", "--batch-size", "32"], "batch_size 32 (saved 4)")):
        assert main(cmd + extra + ["--max-steps", "4", "--resume"]) == 2  # later options win
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
    assert (out / "log.jsonl").read_text() == log_before



def _past_step(log, after_step):
    """Whether ``log`` shows a step past ``after_step`` among the current process's records
    (after its last start/resume line)."""
    recs = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    starts = [i for i, r in enumerate(recs) if r["event"] in ("start", "resume")]
    mine = recs[starts[-1] + 1:] if starts else []
    return any(r["event"] == "step" and r["step"] > after_step for r in mine)


def test_cli_interrupt_saves_the_state_and_resume_finishes_the_same_run(data_dir, tmp_path,
                                                                          signal_when):
    """SIGINT, then SIGTERM, stop the CLI at a step boundary with the full state saved, one line
    on stderr (what was kept, the command to continue) and exit codes 130 / 143; continuing
    with --resume finishes the run, and the final weights equal an uninterrupted run's."""
    steps = 600  # a few seconds, so both signals land mid-run
    model = ["--model", "tiny", "--model-arg", "block_size=32"]
    args = lambda out, *extra: ["train", "--data", str(data_dir), "--config", "simple",  # noqa: E731
                                "--out", str(out), *extra, "--batch-size", "4", "--block-size",
                                "32", "--max-steps", str(steps), "--log-every", "1",
                                "--val-windows", "0", "--no-progress"]
    py = [sys.executable, "-m", "tinytrace"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    r = subprocess.run(py + args(ref, *model), capture_output=True, text=True, env=_env(),
                       timeout=180)
    assert r.returncode == 0, r.stderr
    stopped = []
    for signum, code, extra in ((signal.SIGINT, 130, model), (signal.SIGTERM, 143, model + ["--resume"])):
        a = args(out, *extra)
        after = 5 + (stopped or [0])[-1]
        rc, _, err = signal_when(py + a, lambda: _past_step(out / "log.jsonl", after), signum, _env())
        assert rc == code, err[-3000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], err[-3000:]
        again = a if "--resume" in a else a + ["--resume"]
        assert lines[0].endswith("to continue, run: " + shlex.join(["tinytrace", *again]))
        step = json.loads((out / "state" / "trainer.json").read_text())["step"]
        assert f"state of step {step} of {steps}" in lines[0] and 0 < step < steps
        assert [x for x in _log(out) if x["event"] == "interrupted"][-1]["step"] == step
        stopped.append(step)
    assert stopped[1] > stopped[0]
    r = subprocess.run(py + args(out, *model, "--resume"), capture_output=True, text=True,
                       env=_env(), timeout=180)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["start_step"], summary["step"]) == (stopped[1], steps)
    wr, wo = _weights(ref), _weights(out)
    for k in wr:
        torch.testing.assert_close(wo[k], wr[k], rtol=1e-6, atol=1e-7)


def test_signal_in_process_and_wall_clock_checkpoints(data_dir, tmp_path, monkeypatch):
    """In-process: a signal stops train() with Interrupted at the next step boundary and the
    previous handlers come back. save_every_minutes saves the state on the wall clock, is not
    a trajectory field (a resume may change it) and is optional in an older run.json."""
    from tinytrace.interrupt import Interrupted
    from tinytrace.train import loop

    saved = []
    real_save = loop._save
    monkeypatch.setattr(loop, "_save", lambda r, epoch: (saved.append(r.step), real_save(r, epoch)))
    real_step = loop._optimization_step

    def step_then_signal(r):
        real_step(r)
        if r.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "_optimization_step", step_then_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        T.train(_cfg(max_steps=6, save_every_minutes=0), _tiny(), data_dir, "simple", out,
                progress=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert e.value.exit_code == 143 and "state of step 2 of 6" in str(e.value)
    assert saved == [2] and json.loads((out / "state" / "trainer.json").read_text())["step"] == 2
    monkeypatch.setattr(loop, "_optimization_step", real_step)
    # resumed with another save_every_minutes (not fixed): a tiny period saves after every step
    s = T.train(_cfg(max_steps=6, save_every_minutes=1e-9), _tiny(), data_dir, "simple", out,
                resume=True, progress=False)
    assert s["start_step"] == 2 and saved == [2, 3, 4, 5, 6]
    assert s["steps_per_epoch"] > 6 and not list(out.glob("epoch-*"))  # no epoch ended
    assert "save_every_minutes" not in T.FIXED_FIELDS
    run = json.loads((out / "run.json").read_text())
    del run["train"]["save_every_minutes"]  # a record written before the field existed
    (out / "run.json").write_text(json.dumps(run))
    assert T.read_run(out)[0].save_every_minutes == T.TrainConfig().save_every_minutes == 10
    with pytest.raises(ValueError, match="save_every_minutes"):
        _cfg(save_every_minutes=-1)


def test_cli_bad_input(data_dir, tmp_path, capsys):
    rc = main(["train", "--data", str(data_dir), "--config", "simple", "--out", str(tmp_path / "bad"),
               "--model", "tiny", "--batch-size", "6", "--micro-batch-size", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "micro_batch_size" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", "--data", str(data_dir), "--config", "nope", "--out", str(tmp_path / "bad2"),
               "--model", "tiny", "--no-progress"])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_bench_train():
    out = T.bench_train(model="tiny", steps=2, batch_size=2, micro_batch_size=1, device="cpu")
    for k in ("params", "tokens_per_s", "mfu", "device", "flops_per_token"):
        assert k in out
    assert out["tokens_per_s"] > 0 and out["accumulation_steps"] == 2 and out["mfu"] is None
    assert out["optimizer"] == "adamw" and out["compile_mode"] is None
    assert set(out["optimizer_ms"]) == {"AdamW"} and out["optimizer_ms"]["AdamW"] > 0
    assert out["step_ms"] > 0 and out["model_overrides"] == {}
    one = T.bench_train(model="tiny", steps=1, batch_size=1, device="cpu", optimizer_repeats=0,
                        model_overrides={"n_layer": 1})  # a ModelConfig field over the preset
    assert one["params"] < out["params"] and one["model_overrides"] == {"n_layer": 1}
    assert one["optimizer_ms"] == {}
    assert T.peak_flops("NVIDIA H100 80GB HBM3") == 798e12 and T.peak_flops("cpu") is None
    with pytest.raises(ValueError):
        T.bench_train(steps=0)


def _record_compile(monkeypatch) -> list:
    """torch.compile replaced by the identity, recording each call's mode."""
    modes = []

    def fake(model, mode=None, **kw):
        modes.append(mode)
        return model
    monkeypatch.setattr(torch, "compile", fake)
    return modes


def test_bench_train_measures_a_preset_and_a_compile_mode(monkeypatch):
    """The gpu scale's recipe is measured with its own optimizer and loss, compiled in the mode
    asked for."""
    modes = _record_compile(monkeypatch)
    calls = []  # the compiled model's call signatures: a new one would compile again on a GPU
    monkeypatch.setattr(GPT, "__call__", lambda self, *a, **kw: calls.append(
        (len(a), tuple(kw))) or torch.nn.Module.__call__(self, *a, **kw))
    out = T.bench_train(model="tiny", steps=1, batch_size=2, device="cpu", preset="gpu-muon-state",
                        compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert (out["preset"], out["optimizer"], out["state_loss_weight"]) == ("gpu-muon-state", "muon", 3.0)
    assert out["compile_mode"] == modes[0] == "max-autotune-no-cudagraphs" and len(modes) == 1
    # warm-up, timed step and the optimizers' timing all call it one way (the weighted loss's)
    assert len(calls) == 2 + 1 + 1 and set(calls) == {(1, ())}
    assert set(out["optimizer_ms"]) == {"AdamW", "Muon"}
    with pytest.raises(ValueError, match="compile_mode"):
        T.bench_train(model="tiny", steps=1, device="cpu", compile=True, compile_mode="fast")


def test_compile_mode_reaches_torch_compile_and_stays_out_of_old_keys(data_dir, tmp_path, monkeypatch):
    from tinytrace.experiments.cache import settings

    modes = _record_compile(monkeypatch)
    mc = get_model_config("tiny", block_size=32)
    T.train(_cfg(max_steps=1, compile=True, compile_mode="reduce-overhead"), mc, data_dir, "simple",
            tmp_path / "run", progress=False)
    assert modes == ["reduce-overhead"]
    T.train(_cfg(max_steps=1, compile=True), mc, data_dir, "simple", tmp_path / "run2", progress=False)
    assert modes[-1] is None  # "default": torch.compile's own default
    assert "compile_mode" not in settings(_cfg())  # runs cached before the field keep their keys
    assert settings(_cfg(compile_mode="max-autotune"))["compile_mode"] == "max-autotune"
    with pytest.raises(ValueError, match="compile_mode"):
        _cfg(compile_mode="fast")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_process_launch(data_dir, tmp_path, optimizer):
    """`accelerate launch` with 2 CPU processes (MULTI_CPU, gloo) equals 1 process: each rank
    takes half of the same global batch and DDP averages the gradients."""
    train_args = ["train", "--data", str(data_dir), "--config", "simple", "--model", "tiny",
                  "--batch-size", "4", "--block-size", "32", "--max-steps", "4", "--log-every", "1",
                  "--no-progress", "--model-arg", "block_size=32", "--optimizer", optimizer]
    two = tmp_path / "two"
    cmd = ["timeout", "300", sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), "-m", "tinytrace"]
    t0 = time.time()
    r = subprocess.run(cmd + train_args + ["--out", str(two)], capture_output=True, text=True,
                       env=_env(), timeout=330)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t0 < 300
    start = [x for x in _log(two) if x["event"] == "start"][0]
    assert start["num_processes"] == 2
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "tinytrace"] + train_args + ["--out", str(one)],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    l1 = [x["loss"] for x in _log(one) if x["event"] == "step"]
    l2 = [x["loss"] for x in _log(two) if x["event"] == "step"]
    assert len(l2) == 4 and l2 == pytest.approx(l1, rel=1e-4)
    w1, w2 = _weights(one), _weights(two)
    # Muon's Newton-Schulz iterations amplify the all-reduce's rounding
    atol = 1e-4 if optimizer == "muon" else 1e-5
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=atol)


# Two-statement straight-line snippets over ten variables, RHS a literal or a variable: a real
# tracing task (copy the code, move the marker, keep the state across reassignments) that a
# 0.1M-parameter model learns on one CPU core in minutes. Relative position biases (pe="rpb",
# Sec. 4.4) learn it faster than learned absolute positions.
LEARN = dict(min_statements=2, max_statements=2, max_depth=0, variables="abcdefghij",
             max_literal=9, value_range=(-9, 9), p_rhs_literal=0.5, p_rhs_variable=0.5)


@pytest.mark.slow
def test_learns_simple_tracing(tmp_path):
    data = tmp_path / "data"
    build_preset("base", data, 20_000, test_size=128, validation_size=64, workers=1,
                 progress=False, generator_overrides=LEARN, config_name="learn")
    mc = get_model_config("tiny", block_size=128, pe="rpb")
    # the state lists weighted 3x: 2 epochs then suffice (the plain loss needed 4 for 0.87 EM)
    tc = T.get_train_config("cpu", epochs=2, batch_size=8, micro_batch_size=None, block_size=128,
                            lr_peak=1e-2, lr_min=1e-3, warmup_frac=0.05, phase1_frac=1.0,
                            weight_decay=0.0, log_every=200, val_windows=32, state_loss_weight=3)
    t0, threads = time.time(), torch.get_num_threads()
    # both cores when the suite runs in one process (1.4x faster than its 1 thread, conftest);
    # one under pytest-xdist, whose other worker holds the second core
    torch.set_num_threads(1 if "PYTEST_XDIST_WORKER" in os.environ else 2)
    try:
        summary = T.train(tc, mc, data, "learn", tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    train_s = time.time() - t0
    test = load(data, "learn", "test")
    df, ev = evaluate(load_checkpoint(tmp_path / "run"), test, limit=128)
    # A snippet that assigns one variable twice needs its value replaced in the final state,
    # the only block where that shows: a skill some draws learn within these 2 epochs and
    # others not (then ~2 of its ~46 test snippets, 0.63 EM overall), so only the snippets
    # of two variables are held to a high bar.
    names = [[line.split("=")[0].strip() for line in r["code"].splitlines()] for r in test]
    two = [ok for ok, n in zip(df["correct"], names) if len(set(n)) == len(n)]
    print(f"\nlearning test: {summary['step']} steps, {summary['tokens']} tokens, {train_s:.1f} s, "
          f"{summary['tokens_per_s']:.0f} tok/s, loss {summary['loss']:.4f}, "
          f"val_loss {summary['val_loss']:.4f}, EM {ev['exact_match']:.3f}, "
          f"two variables {sum(two)}/{len(two)}")
    assert len(two) >= 64 and sum(two) >= 0.9 * len(two)
    assert ev["exact_match"] >= 0.5
