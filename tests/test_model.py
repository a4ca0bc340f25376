"""tinytrace.model: presets, causality, KV cache, head padding, RPE/RPB, checkpoints."""
import json

import pytest
import torch
from safetensors import safe_open

from tinytrace.lang import tokenizer as tk
from tinytrace.model import (
    GPT,
    MODEL_PRESETS,
    ModelConfig,
    count_params,
    get_model_config,
    load_checkpoint,
    match_params,
    save_checkpoint,
    sdpa_backend,
    t5_bucket,
)

VARIANTS = [dict(pe="ape"), dict(pe="rpe"), dict(pe="rpe", rpe_values=True), dict(pe="rpb")]
IDS = ["ape", "rpe", "rpe+values", "rpb"]




def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=64, rpe_clip=8, rpb_buckets=8, rpb_max_distance=32)
    cfg.update(kw)
    return GPT(get_model_config("tiny", **cfg)).eval()


def test_presets_and_param_counts():
    assert GPT(MODEL_PRESETS["paper"]).num_params() == 19_727_008  # the paper's ~20M
    assert 0.1e6 <= count_params(MODEL_PRESETS["tiny"]) <= 0.2e6
    assert 0.8e6 <= count_params(MODEL_PRESETS["small"]) <= 1.0e6
    assert 2.7e6 <= count_params(MODEL_PRESETS["medium"]) <= 3.3e6
    assert all(c.block_size == 512 for c in MODEL_PRESETS.values())
    with pytest.raises(ValueError, match="paper"):
        get_model_config("huge")
    assert get_model_config("tiny", dropout=0.1).dropout == 0.1
    cfg = get_model_config("paper", pe="rpb")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_embed"):
        ModelConfig.from_dict({"n_embed": 3})
    # paper model: 6 * (19,510,256 non-embedding + 77*368 head) + 12 * 12 * 368 * 512
    assert GPT(MODEL_PRESETS["paper"]).flops_per_token() == pytest.approx(144.36e6, rel=1e-3)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_count_params_closed_form(kw):
    for name in ("tiny", "small"):
        cfg = get_model_config(name, **kw)
        assert GPT(cfg).num_params() == count_params(cfg)


@pytest.mark.parametrize("pe", ["rpe", "rpb"])
def test_match_params(pe):
    for name in ("tiny", "small", "paper"):
        ape = count_params(get_model_config(name))
        cfg = match_params(get_model_config(name, pe=pe))
        assert cfg.n_embd % cfg.n_head == 0 and cfg.n_layer == MODEL_PRESETS[name].n_layer
        gap = abs(count_params(cfg) - ape)
        for other in (cfg.n_embd - cfg.n_head, cfg.n_embd + cfg.n_head):  # the closest width
            assert gap <= abs(count_params(get_model_config(name, pe=pe, n_embd=other)) - ape)
        # one step of n_head in the width moves small/tiny models by 5-10%
        assert gap / ape < (0.01 if name == "paper" else 0.06)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_shapes_loss_and_causality(kw):
    m = tiny(**kw)
    x = torch.randint(0, 77, (2, 40))
    y = torch.randint(0, 77, (2, 40))
    y[:, :10] = -100
    logits, loss = m(x, y)
    assert logits.shape == (2, 40, 77)
    ref = torch.nn.functional.cross_entropy(logits[:, 10:].reshape(-1, 77), y[:, 10:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert m(x)[1] is None
    x2 = x.clone()
    x2[:, 25:] = torch.randint(0, 77, (2, 15))
    assert torch.allclose(m(x2)[0][:, :25], logits[:, :25], atol=1e-6)  # the future never leaks back
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_kv_cache_equals_full_forward(kw):
    m = tiny(**kw)
    x = torch.randint(0, 77, (3, 48))
    full = m(x)[0]
    cache = m.new_kv_cache(3)
    steps = [m(x[:, :20], kv_cache=cache)[0], m(x[:, 20:23], kv_cache=cache)[0]]
    steps += [m(x[:, t: t + 1], kv_cache=cache)[0] for t in range(23, 48)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # rows of different lengths (right padding) and a forward on some rows only
    cache = m.new_kv_cache(3)
    m(x[:, :30], kv_cache=cache)
    cache.set_lens([0, 1, 2], [10, 30, 20])
    out = m(torch.stack([x[0, 10:11], x[2, 20:21]]), kv_cache=cache, rows=[0, 2])[0]
    assert cache.lens_host == [11, 30, 21] and cache.lens.tolist() == [11, 30, 21]
    assert torch.allclose(out[0, 0], full[0, 10], atol=1e-5) and torch.allclose(out[1, 0], full[2, 20], atol=1e-5)
    cache.keep([2])
    out = m(x[2:3, 21:22], kv_cache=cache)[0]
    assert torch.allclose(out[0, 0], full[2, 21], atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_padded_heads_equal_unpadded(kw):
    # n_embd 92 / 4 heads = head size 23, as the paper model's 368 / 16
    padded = tiny(n_embd=92, head_pad_multiple=8, **kw)
    plain = GPT(padded.config.__class__(**{**padded.config.to_dict(), "head_pad_multiple": 0})).eval()
    plain.load_state_dict(padded.state_dict())
    assert padded.config.padded_head_size == 24 and plain.config.padded_head_size == 23
    x = torch.randint(0, 77, (2, 33))
    assert torch.allclose(padded(x)[0], plain(x)[0], atol=1e-5)
    cache = padded.new_kv_cache(2)
    assert cache.k[0].shape[-1] == 24 and len(cache.k) == padded.config.n_layer
    assert torch.allclose(padded(x, kv_cache=cache)[0], plain(x)[0], atol=1e-5)


def test_relative_position_pieces():
    d = torch.arange(0, 300)
    b = t5_bucket(d, 32, 128)
    assert b[:16].tolist() == list(range(16)) and b.max() == 31 and (b.diff() >= 0).all()
    rpe, rpb = tiny(pe="rpe"), tiny(pe="rpb")
    assert rpe.transformer.h[0].attn.rpe_k.shape == (9, 16)  # clip 8 -> distances 0..8, head size
    assert rpb.rpb.weight.shape == (8, 4) and "wpe" not in rpb.transformer
    for m in (rpe, rpb):
        assert sdpa_backend(m.config) in {"flash", "efficient", "math", "cudnn"}
    assert sdpa_backend(get_model_config("paper")) in {"flash", "math"}  # CPU
    assert sdpa_backend(get_model_config("tiny", pe="rpe", rpe_values=True)) == "explicit"


def test_checkpoint_round_trip(tmp_path):
    m = tiny(pe="rpb")
    # a torch.compile-like wrapper (its state_dict has `_orig_mod.` keys) must save plain keys
    wrapper = torch.nn.Module()
    wrapper._orig_mod = m
    assert next(iter(wrapper.state_dict())).startswith("_orig_mod.")
    save_checkpoint(wrapper, tmp_path / "run", extra={"step": 7})
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["vocab"] == tk.VOCAB and meta["step"] == 7 and meta["model"] == m.config.to_dict()
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("_orig_mod") for k in f.keys())
    m2 = load_checkpoint(tmp_path / "run")
    x = torch.randint(0, 77, (1, 20))
    assert torch.equal(m(x)[0], m2.eval()(x)[0])
    assert m2.lm_head.weight is m2.transformer.wte.weight
    with pytest.raises(ValueError):
        save_checkpoint(m, tmp_path / "bad", extra={"vocab": []})


def test_checkpoint_mismatch_errors(tmp_path):
    save_checkpoint(tiny(), tmp_path / "run")
    cfg_path = tmp_path / "run" / "config.json"
    good = json.loads(cfg_path.read_text())
    other_vocab = dict(good, vocab=good["vocab"][:-1] + ["xor"])
    cfg_path.write_text(json.dumps(other_vocab))
    with pytest.raises(ValueError, match="vocab.*id 76"):
        load_checkpoint(tmp_path / "run")
    cfg_path.write_text(json.dumps(dict(good, model={**good["model"], "n_embd": 72})))
    with pytest.raises(ValueError, match="model"):
        load_checkpoint(tmp_path / "run")
    cfg_path.write_text(json.dumps(dict(good, model={**good["model"], "n_layer": 3})))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path / "run")
    cfg_path.write_text(json.dumps(dict(good, model={**good["model"], "pe": "rpb"})))
    with pytest.raises(ValueError, match="unexpected"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")
