"""tinytrace.train.sft: instruction masking, LoRA parameter counts, a fine-tuning run and its cache."""
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from tinytrace.cli import main
from tinytrace.data import build_preset
from tinytrace.lang import tokenizer as tk
from tinytrace.model import GPT, get_model_config, load_checkpoint, save_checkpoint
from tinytrace.train import sft as S

# Straight-line snippets with few variables and small values (as tests/test_train.py).
SIMPLE = dict(min_statements=2, max_statements=3, max_depth=0, variables="ab", max_literal=4,
              value_range=(-4, 4))
BLOCK = 128  # most SIMPLE examples (46-137 tokens) fit; a few are truncated




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft_data")
    build_preset("base", d, 600, test_size=16, validation_size=48, workers=1, progress=False,
                 generator_overrides=SIMPLE, config_name="simple")
    return d


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft_base")
    torch.manual_seed(0)
    save_checkpoint(GPT(get_model_config("tiny", block_size=BLOCK)), d, extra={"note": "random init"})
    return d


def _cfg(**kw):
    base = dict(batch_size=16, micro_batch_size=8, data_size=256, epochs=2, lr=1e-2,
                eval_every_frac=0.1, val_examples=32, block_size=BLOCK, log_every=1)
    base.update(kw)
    return S.get_sft_config("smoke", **base)


def _log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


# --- instruction masking -----------------------------------------------------------------------
def test_masked_batch_by_hand():
    P, E, ST = tk.PAD_ID, tk.EOS_ID, tk.STEP_ID
    a = [5, 6, ST, 7, 8, ST, 9, E]  # prompt: 3 tokens; truncated to block_size + 1 = 6
    b = [5, ST, 9, E]  # prompt: 2 tokens; padded
    assert S.prompt_length(a) == 3 and S.prompt_length(b) == 2 and S.prompt_length([5, 6]) == 3
    x, y = S.masked_batch([a, b], [3, 2], block_size=5)
    assert x.dtype == y.dtype == torch.long
    assert x.tolist() == [[5, 6, ST, 7, 8], [5, ST, 9, E, P]]
    # y[t] predicts token t + 1: learned only when t + 1 is past the prompt and inside the example
    assert y.tolist() == [[-100, -100, 7, 8, ST], [-100, 9, E, -100, -100]]


def test_masking_on_real_examples(data_dir):
    ex = S.ExampleSet(data_dir, "simple", "train", block_size=BLOCK, limit=64)
    assert len(ex) == 64 and ex.stats["examples"] == 64
    ids = np.arange(len(ex))
    x, y = ex.batch(ids)
    for i in ids:
        seq = ex.example(i)
        p = int(ex.prompt_lens[i])
        assert seq[p - 1] == tk.STEP_ID and tk.STEP_ID not in seq[:p - 1].tolist()  # FIRST #STEP
        assert tk.decode(seq[:p].tolist()).endswith("\n#STEP\n")
        L = min(len(seq), BLOCK + 1)
        t = np.arange(y.shape[1])
        learned = (t + 1 >= p) & (t + 1 < L)
        yi, xi = y[i].numpy(), x[i].numpy()
        assert (yi[~learned] == -100).all()  # exactly prompt + padding are masked
        assert np.array_equal(yi[learned], seq[1:L][t[learned]])  # the next tokens elsewhere
        n = min(L, len(xi))  # inputs: the example's tokens, then PAD
        assert np.array_equal(xi[:n], seq[:n]) and (xi[n:] == tk.PAD_ID).all()
    # a window shorter than the prompts: such examples have no output token and are dropped
    short = S.ExampleSet(data_dir, "simple", "train", block_size=12, limit=None)
    full = S.ExampleSet(data_dir, "simple", "train", block_size=BLOCK, limit=None)
    assert short.stats["dropped_no_output"] > 0 and (short.prompt_lens < 13).all()
    assert len(short) + short.stats["dropped_no_output"] == full.stats["available"]
    assert short.stats["truncated"] == len(short)
    _, ys = short.batch(np.arange(len(short)))
    assert ((ys != -100).sum(1) > 0).all()


# --- LoRA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank,bias", [(8, False), (4, False), (8, True)])
def test_only_lora_trainable(rank, bias):
    mc = get_model_config("tiny", bias=bias)
    model = GPT(mc)
    n_base = model.num_params()
    pm = S.apply_lora(model, S.SFTConfig(rank=rank))
    d, L = 64, 2
    # per layer r * (in + out): c_attn d->3d, attn.c_proj d->d, c_fc d->4d, mlp.c_proj 4d->d
    hand = L * rank * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    if bias:
        hand += L * (3 * d + d + 4 * d + d)  # every Linear bias of the blocks
    trainable, total = S.count_params(pm)
    assert trainable == hand == S.lora_param_count(mc, rank)
    assert total == n_base + L * rank * 16 * d
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n or n.endswith(".bias") for n in names)
    assert sum(".lora_" in n for n in names) == 2 * 4 * L  # A and B of 4 Linear layers per block
    # embeddings (tied with lm_head), positions and norms are frozen
    assert not pm.base_model.model.transformer.wte.weight.requires_grad
    assert S.lora_param_count(get_model_config("paper"), 8) == 12 * 8 * 16 * 368 == 565_248


def test_without_peft_says_how_to_install_it(data_dir, base_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    says = "LoRA fine-tuning needs peft: pip install 'tinytrace[lora]'"
    with pytest.raises(ValueError, match=re.escape(says)):
        S.apply_lora(GPT(get_model_config("tiny")), S.SFTConfig())
    assert main(["sft", "--base", str(base_run), "--data", str(data_dir), "--config", "simple",
                 "--out", str(tmp_path / "sft"), "--preset", "smoke", "--block-size", str(BLOCK),
                 "--batch-size", "16", "--data-size", "64", "--val-examples", "16",
                 "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"tinytrace sft: error: {says}"


# --- fine-tuning --------------------------------------------------------------------------------
def test_finetune_learns_and_keeps_best(data_dir, base_run, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    cfg = _cfg()
    s = S.finetune(base_run, data_dir, "simple", out, cfg, progress=False, device="cpu")
    assert s["cached"] is False and s["steps"] == 2 * (256 // 16) == 32
    assert s["trainable_params"] == S.lora_param_count(get_model_config("tiny"), 8) == 16_384
    assert s["total_params"] == 136_320 - (512 - BLOCK) * 64 + 16_384
    assert s["train_examples"] == 256 and s["val_examples"] == 32

    log = _log(out)
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0] + list(range(3, 32, 3)) + [32]  # ~every 10% + end
    vals = [r["val_loss"] for r in evals]
    best = int(np.argmin(vals))
    assert s["best_step"] == evals[best]["step"] and s["best_val_loss"] == min(vals)
    assert s["initial_val_loss"] == vals[0] and s["final_val_loss"] == vals[-1]
    # learns: from ~ln(77) = 4.30 to 3.87. The random base's frozen tied head (std 0.02) and
    # RMSNorm gains cap how peaked its logits can get, so the drop stays moderate.
    assert vals[-1] < vals[0] - 0.3 and s["best_val_loss"] < vals[0] - 0.3
    steps = [r for r in log if r["event"] == "step"]
    lrs = [r["lr"] for r in steps]
    assert max(lrs) == pytest.approx(cfg.lr) and lrs[0] == pytest.approx(0.1 * cfg.lr)
    assert lrs[-1] == pytest.approx(0.1 * cfg.lr, rel=0.05)  # cosine down to 10% of the peak

    # the checkpoint is a plain GPT: the best model, LoRA merged into the base weights
    model, base = load_checkpoint(out), load_checkpoint(base_run)
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == s["best_step"] and meta["val_loss"] == s["best_val_loss"]
    wb, wm = base.state_dict(), model.state_dict()
    for name in wb:
        changed = not torch.equal(wb[name], wm[name])
        assert changed == any(k in name for k in ("c_attn", "c_proj", "c_fc")), name
    # its validation loss is the logged best (same examples, same masking)
    val = S.ExampleSet(data_dir, "simple", "validation", BLOCK, cfg.val_examples)
    again = S.validation_loss(model, val, 16, Accelerator(cpu=True))
    assert again == pytest.approx(s["best_val_loss"], rel=1e-4)

    # rerun: the cached summary, nothing trained, nothing rewritten
    before = (out / "log.jsonl").read_text()
    monkeypatch.setattr(S, "apply_lora", lambda *a, **k: pytest.fail("trained again"))
    s2 = S.finetune(base_run, data_dir, "simple", out, cfg, progress=False, device="cpu")
    assert s2["cached"] is True and {**s2, "cached": False} == json.loads(json.dumps(s))
    assert (out / "log.jsonl").read_text() == before
    with pytest.raises(ValueError, match="another sft"):
        S.finetune(base_run, data_dir, "simple", out, _cfg(rank=4), progress=False, device="cpu")


def test_cache_refuses_a_changed_or_unknown_saved_field(data_dir, base_run, tmp_path):
    """A finished run is reused only with the same config: done.json is read with the strict
    SFTConfig.from_dict, so a changed field or one this code does not know is refused."""
    out, cfg = tmp_path / "sft", _cfg(data_size=16, epochs=1, eval_every_frac=1.0, val_examples=8)
    S.finetune(base_run, data_dir, "simple", out, cfg, progress=False, device="cpu")
    done = json.loads((out / "done.json").read_text())
    assert S.finetune(base_run, data_dir, "simple", out, cfg, progress=False)["cached"] is True
    for key, value, error in (("lr", 0.5, "another sft"),
                              ("lora_bias", True, r"unknown SFTConfig field\(s\): lora_bias")):
        (out / "done.json").write_text(json.dumps({**done, "sft": {**done["sft"], key: value}}))
        with pytest.raises(ValueError, match=error):
            S.finetune(base_run, data_dir, "simple", out, cfg, progress=False, device="cpu")


def test_says_when_the_validation_split_is_short(data_dir, base_run, tmp_path, caplog):
    """Fewer usable validation examples than ``val_examples``: the run validates on what there
    is, records that number, and says so."""
    cfg = _cfg(data_size=16, epochs=1, eval_every_frac=1.0, val_examples=1000)
    with caplog.at_level("WARNING", logger=S.__name__):
        s = S.finetune(base_run, data_dir, "simple", tmp_path / "sft", cfg, progress=False,
                       device="cpu")
    assert 0 < s["val_examples"] <= 48  # the fixture's validation split
    assert f"validating on {s['val_examples']} examples, fewer than val_examples=1000" in caplog.text


@pytest.mark.parametrize("resume", [False, True])
def test_refuses_to_write_over_a_pre_training_run(data_dir, base_run, tmp_path, resume):
    """An --out that holds a pre-training run (its weights, or its run.json) is refused before
    anything is written: fine-tuning into it would replace its weights and log."""
    cfg = _cfg(data_size=16, epochs=1, eval_every_frac=1.0, val_examples=8)
    for extra in ((), ("run.json",)):
        out = tmp_path / f"pre{len(extra)}"
        out.mkdir()
        for name in ("model.safetensors", "config.json"):
            (out / name).write_bytes((base_run / name).read_bytes())
        for name in extra:
            (out / name).write_text("{}")
            (out / "model.safetensors").unlink()
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(ValueError, match="not a fine-tuning run"):
            S.finetune(base_run, data_dir, "simple", out, cfg, progress=False, device="cpu",
                       resume=resume)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_micro_batches_match_full_batch(data_dir, base_run, tmp_path):
    """Token-weighted accumulation: 4 micro-batches give the full batch's update."""
    cfg = dict(data_size=32, epochs=1, eval_every_frac=1.0, val_examples=8, lr=1e-2)
    a = S.finetune(base_run, data_dir, "simple", tmp_path / "a", _cfg(micro_batch_size=4, **cfg),
                   progress=False, device="cpu")
    b = S.finetune(base_run, data_dir, "simple", tmp_path / "b", _cfg(micro_batch_size=None, **cfg),
                   progress=False, device="cpu")
    assert a["steps"] == b["steps"] == 2 and a["best_step"] == b["best_step"] == 2  # not the base
    wa, wb = load_checkpoint(tmp_path / "a").state_dict(), load_checkpoint(tmp_path / "b").state_dict()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-6)


def test_interrupt_saves_the_state_and_resume_equals_an_uninterrupted_run(
        data_dir, base_run, tmp_path, monkeypatch, capsys):
    """SIGINT mid-run (sent to this very process, as Ctrl-C would): the CLI stops at the step
    boundary with the state saved, prints one line, returns 130 and restores the handlers;
    the same command with --resume added finishes with the uninterrupted run's results."""
    opts = dict(batch_size=16, micro_batch_size=8, data_size=128, epochs=2, lr=1e-2,
                val_examples=16, block_size=BLOCK, seed=0)
    ref = S.finetune(base_run, data_dir, "simple", tmp_path / "ref",
                     S.get_sft_config("smoke", **opts), progress=False, device="cpu")
    argv = ["sft", "--base", str(base_run), "--data", str(data_dir), "--config", "simple",
            "--out", str(tmp_path / "sft"), "--preset", "smoke", "--device", "cpu", "--no-progress",
            *[x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    real_step = S._optimization_step

    def step_then_signal(r, step):
        real_step(r, step)
        if step == 5:  # 0-based: after the 6th of 16 steps
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(S, "_optimization_step", step_then_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(argv) == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGINT" in lines[0] and "state of step 6 of 16" in lines[0]
    assert lines[0].endswith(shlex.join(["tinytrace", *argv, "--resume"]))
    out = tmp_path / "sft"
    assert json.loads((out / "state" / "trainer.json").read_text())["step"] == 6
    assert not (out / "done.json").exists()
    monkeypatch.setattr(S, "_optimization_step", real_step)
    saved = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    assert main(argv) == 2  # the same command without --resume would throw the state away
    assert "pass --resume" in capsys.readouterr().err
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == saved
    assert main(argv + ["--resume"]) == 0
    s = json.loads((out / "done.json").read_text())
    for k in ("steps", "best_step", "best_val_loss", "initial_val_loss", "final_val_loss"):
        assert s[k] == pytest.approx(ref[k], rel=1e-6), k
    assert not (out / "state").exists()  # finished: a cache entry, nothing to resume
    wr, wo = load_checkpoint(tmp_path / "ref").state_dict(), load_checkpoint(out).state_dict()
    for name in wr:
        torch.testing.assert_close(wo[name], wr[name], rtol=1e-6, atol=1e-7)
    evals = [r["step"] for r in _log(out) if r["event"] == "eval"]
    assert evals == [r["step"] for r in _log(tmp_path / "ref") if r["event"] == "eval"]


def test_config_presets():
    p = S.get_sft_config("paper")
    assert (p.rank, p.lr, p.batch_size, p.weight_decay, p.betas, p.eval_every_frac) == \
        (8, 1e-3, 512, 0.1, (0.9, 0.95), 0.025)
    assert S.lr_at(0, 100, p) == pytest.approx(1e-4) and S.lr_at(10, 100, p) == pytest.approx(1e-3)
    assert S.SFTConfig.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        S.get_sft_config("nope")
    with pytest.raises(ValueError):
        S.SFTConfig(target_modules=("lm_head",))
