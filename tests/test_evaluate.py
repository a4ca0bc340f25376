"""tinytrace.evaluate: sliding window, cached == uncached == one-at-a-time greedy, metrics, CLI."""
import json
import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tinytrace.cli import main
from tinytrace.data import build_preset, load
from tinytrace.evaluate import (
    METRICS,
    StaticDecoder,
    Record,
    bench_eval,
    evaluate,
    final_state,
    first_wrong,
    fit_window,
    greedy_generate,
    greedy_generate_static,
    make_records,
    restart_offset,
    teacher_forced,
    tf_metrics,
)
from tinytrace.lang import tokenizer as tk
from tinytrace.model import GPT, get_model_config, save_checkpoint

S = tk.STEP_ID




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    build_preset("base", d, 300, test_size=40, validation_size=0, workers=1, progress=False, tokens=False)
    return d


@pytest.fixture(scope="module")
def rows(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
        return [dict(r) for r in load(data_dir, "base", "test")]


class Teacher(torch.nn.Module):
    """Replays known token sequences: finds where a window occurs (longest prefix match) and
    predicts the true next tokens; remembers every window it was shown."""

    def __init__(self, seqs, block_size):
        super().__init__()
        self.config = SimpleNamespace(block_size=block_size)
        self.seqs = [np.asarray(s) for s in seqs]
        self.windows = []

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, len(tk.VOCAB))
        for b, row in enumerate(idx.numpy()):
            row = row[: int((row != tk.PAD_ID).sum())]  # right padding; PAD never occurs in traces
            self.windows.append(row.tolist())
            best = (-1, None, 0)
            for s in self.seqs:
                for o in np.flatnonzero(s == row[0]):
                    seg = s[o: o + len(row)]
                    eq = seg == row[: len(seg)]
                    m = len(seg) if eq.all() else int(eq.argmin())
                    if m > best[0]:
                        best = (m, s, o)
            m, s, o = best
            nxt = s[o + 1: o + m + 1]
            logits[b, np.arange(len(nxt)), nxt] = 1.0
        return logits, None


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(get_model_config("tiny", **kw)).eval()


def test_restart_rule():
    w = [5, S, 7, 8, S, 9, 9, S, 6]
    assert restart_offset(w, 8) == 4  # the #STEP opening the previous block
    assert fit_window(w, 0, 8) == 4 and fit_window(w, 0, 9) == 0
    assert restart_offset([S, 7, 7, 7, S, 6], 5) == 4  # previous block at 0: the last #STEP
    assert restart_offset([7] * 10, 8) == 6  # no #STEP at all: keep the newest half
    assert len(w) - fit_window(w, 0, 2) <= 2


def test_records_and_metric_helpers(rows):
    recs = make_records(rows, 3)
    r = recs[0]
    assert r.prompt == rows[0]["code"] + "\n#STEP\n" and r.target.endswith("\n\n")
    assert tk.decode(r.prompt_ids + r.target_ids) == rows[0]["trace"] + "\n\n"
    t = r.target_ids
    assert first_wrong(t, t) is None
    k = t.index(S, t.index(S) + 1) + 3  # third token of block 3
    bad = t[:k] + [tk.STOI["z"]] + t[k + 1:]
    assert first_wrong(bad, t) == (k, 3, 0)
    last = len(t) - 1 - t[::-1].index(S)
    assert first_wrong(t[:-1], t) == (len(t) - 1, t.count(S) + 1, t[last + 1: -1].count(tk.NEWLINE_ID))
    fs = final_state(t)
    assert fs == tk.encode(rows[0]["trace"].rsplit("@^$", 1)[1])
    assert final_state(t[:5]) is None
    m = tf_metrics(t, np.asarray(t))
    assert m["blocks"] == m["blocks_ok"] == t.count(S) + 1 and m["state_ok"] == m["state_tokens"] > 0
    m = tf_metrics(t, np.asarray(bad))
    assert m["blocks_ok"] == m["blocks"] - 1
    with pytest.raises(ValueError):
        make_records([{"code": "a = 1", "trace": "b = 1\n#STEP\n"}])


def test_teacher_exact_match_with_window_restarts(rows):
    """A model that replays the truth gets every metric at 1.0, through window restarts that
    always start at a #STEP token."""
    bs = 160
    pick = [r for r in rows if r["max_step_pair_tokens"] <= bs and r["n_tokens"] > 1.5 * bs][:3]
    assert len(pick) == 3
    recs = make_records(pick)
    teacher = Teacher([r.prompt_ids + r.target_ids for r in recs], bs)
    df, summary = evaluate(teacher, recs, batch_size=2, use_cache=False, max_len_factor=1.0)
    assert summary["n"] == 3 and summary["exact_match"] == 1.0 and df["correct"].all()
    assert summary["step_em_tf"] == summary["final_state_match"] == summary["state_token_acc"] == 1.0
    assert summary["window_restarts"] > 0
    prompts = {tuple(r.prompt_ids[:8]) for r in recs}
    assert all(len(w) <= bs for w in teacher.windows)
    assert all(w[0] == S or tuple(w[:8]) in prompts for w in teacher.windows)
    assert sum(w[0] == S for w in teacher.windows) > 0
    assert df["first_wrong_step"].isna().all()


def test_exact_match_counts_a_single_wrong_token(rows):
    recs = make_records(rows[:2])
    seqs = [r.prompt_ids + r.target_ids for r in recs]
    t = recs[0].target_ids
    k = t.index(S, t.index(S) + 1) + 1  # first token of block 3
    k = next(i for i in range(k, len(t)) if tk.VOCAB[t[i]].isdigit())
    wrong = list(seqs[0])
    wrong[len(recs[0].prompt_ids) + k] = tk.STOI[str((int(tk.VOCAB[t[k]]) + 1) % 10)]
    teacher = Teacher([wrong, seqs[1]], 512)
    df, summary = evaluate(teacher, recs, batch_size=2, use_cache=False)
    assert summary["exact_match"] == 0.5 and df["correct"].tolist() == [False, True]
    row = df.iloc[0]
    line = t[t.index(S, t.index(S) + 1) + 1: k].count(tk.NEWLINE_ID)
    assert (row.first_wrong_token, row.first_wrong_step, row.first_wrong_line) == (k, 3, line)
    assert 0 < summary["step_em_tf"] < 1 and row.finished


def _wrong_digit(seq, start, nth):
    """``seq`` with its ``nth`` digit from ``start`` on replaced by the next digit."""
    k = [i for i in range(start, len(seq)) if tk.VOCAB[seq[i]].isdigit()][nth]
    return seq[:k] + [tk.STOI[str((int(tk.VOCAB[seq[k]]) + 1) % 10)]] + seq[k + 1:]


def test_a_subset_of_a_cached_evaluation_equals_evaluating_it(rows, tmp_path, monkeypatch):
    """The robustness experiment reads the correctly traced snippets' scores off the full set's
    cached evaluation (``subset``): every score and per-example field equals a fresh evaluation
    of those snippets alone. A replaying model gets some traces wrong (a digit early or late),
    so no score is trivially 0 or 1."""
    from tinytrace.experiments import cache as C

    monkeypatch.setattr(C, "evaluate", partial(evaluate, use_cache=False))  # Teacher: no KV cache
    recs = make_records(rows[:6])
    seqs = [r.prompt_ids + r.target_ids for r in recs]
    for i, nth in ((1, 0), (2, -1), (4, 3)):
        seqs[i] = _wrong_digit(seqs[i], len(recs[i].prompt_ids), nth)
    teacher = Teacher(seqs, 512)
    full = C.Cache(tmp_path, progress=False).evaluate(teacher, "run", recs, "all", batch_size=4)
    assert full["correct"] == [True, False, False, True, False, True]
    for pos in ([0, 2, 4], [1, 2, 5], [3], []):
        got = C.subset(full, pos)
        if not pos:
            assert got == {"n": 0, "correct": [], "max_indent": [], "failure": []}
            continue
        df, want = evaluate(teacher, [recs[i] for i in pos], batch_size=4, use_cache=False)
        assert {k: got[k] for k in METRICS} == pytest.approx({k: want[k] for k in METRICS})
        assert got["correct"] == df["correct"].tolist() == [full["correct"][i] for i in pos]
        assert got["failure"] == [full["failure"][i] for i in pos]
        assert got["max_indent"] == [full["max_indent"][i] for i in pos]
        # a result cached before max_indent existed still gives its subsets' scores
        older = C.subset({k: v for k, v in full.items() if k != "max_indent"}, pos)
        assert "max_indent" not in older and older["exact_match"] == got["exact_match"]
    assert 0 < C.subset(full, [0, 2, 4])["step_em_tf"] < 1


@pytest.mark.parametrize("pe", ["ape", "rpe", "rpb"])
def test_cached_uncached_single_and_teacher_forcing_agree(rows, pe):
    """Random tiny model, window of 64 tokens: batched cached == batched re-encoding ==
    one-at-a-time greedy, through window restarts; teacher forcing on the model's own outputs
    (same windows) predicts them exactly."""
    m = tiny(block_size=64, pe=pe, rpe_clip=16, rpb_max_distance=32, rpb_buckets=8)
    recs = [r for r in make_records(rows) if len(r.prompt_ids) < 60][:4]
    prompts = [r.prompt_ids for r in recs]
    max_new = [90, 110, 70, 100][: len(prompts)]
    cached, st = greedy_generate(m, prompts, max_new, stop_at_eos=False, sync_every=3)
    uncached, su = greedy_generate(m, prompts, max_new, use_cache=False, stop_at_eos=False)
    single = [greedy_generate(m, [p], [n], stop_at_eos=False)[0][0] for p, n in zip(prompts, max_new)]
    static, ss = greedy_generate_static(m, prompts, max_new, stop_at_eos=False, sync_every=5)
    full, sf = greedy_generate_static(m, prompts, max_new, stop_at_eos=False, sync_every=5,
                                      width_buckets=1)
    assert cached == uncached == single == static == full
    # attention widths 16/32/48/64 (the short windows read less), or always 64
    assert sum(ss["width_steps"].values()) == ss["steps"] - 1  # token 0 comes from the prompt
    assert ss["width_steps"][16] > 0 and ss["width_steps"][64] > 0
    assert list(sf["width_steps"]) == [64] and sf["steps"] == ss["steps"]
    assert [len(o) for o in cached] == max_new and st == su and st["restarts"] > 0
    assert {k: ss[k] for k in st} == st and ss["restart_batches"] <= ss["restarts"]
    own = [Record("", "", p, o) for p, o in zip(prompts, cached)]
    preds = teacher_forced(m, own, batch_size=3)
    assert all(np.array_equal(p, o) for p, o in zip(preds, cached))


def test_eos_prefix_starts_every_prompt_with_eos(rows):
    """``eos_prefix`` evaluates from [EOS] + prompt (the training stream's context of an example)."""
    m = tiny(block_size=64)
    recs = [r for r in make_records(rows) if len(r.prompt_ids) < 60][:3]
    df, s = evaluate(m, recs, batch_size=2, max_len_factor=0.3, eos_prefix=True)
    want, _ = greedy_generate(m, [[tk.EOS_ID] + r.prompt_ids for r in recs],
                              [math.ceil(0.3 * len(r.target_ids)) + 16 for r in recs])
    assert df["prediction"].tolist() == [tk.decode(o) for o in want]
    assert s["eos_prefix"] and not evaluate(m, recs[:1], max_len_factor=0.3)[1]["eos_prefix"]
    assert recs[0].prompt_ids[0] != tk.EOS_ID  # the caller's records are left as they were


def test_sliding_window_equals_full_context_while_it_fits(rows):
    m = tiny()
    prompts = [r.prompt_ids for r in make_records(rows[:2])]
    out, st = greedy_generate(m, prompts, [40, 40], stop_at_eos=False)
    assert st["restarts"] == 0
    for p, o in zip(prompts, out):
        x = torch.tensor([p])
        with torch.no_grad():
            for _ in range(40):
                x = torch.cat([x, m(x)[0][:, -1].argmax(-1, keepdim=True)], 1)
        assert x[0, len(p):].tolist() == o


class EOSAfter7(GPT):
    """Random tiny GPT that always emits EOS after token 7."""

    def forward(self, idx, targets=None, **kw):
        logits, loss = super().forward(idx, targets, **kw)
        return logits + 100.0 * (idx == 7)[..., None] * torch.nn.functional.one_hot(
            torch.tensor(tk.EOS_ID), logits.size(-1)), loss


def test_eos_stops_rows():
    torch.manual_seed(1)
    m = EOSAfter7(get_model_config("tiny")).eval()
    prompts = [[3, 4, 7], [3, 4, 5], [9, 9], [12, 13, 14]]
    outs, st = greedy_generate(m, prompts, [30] * 4, sync_every=4)
    ref, _ = greedy_generate(m, prompts, [30] * 4, use_cache=False)
    assert outs == ref and outs[0] == [tk.EOS_ID]
    for o in outs:
        assert o.count(tk.EOS_ID) <= 1 and (o[-1] == tk.EOS_ID or len(o) == 30)
        assert 7 not in o or o[o.index(7) + 1] == tk.EOS_ID
    assert st["generated_tokens"] == sum(map(len, outs))
    static, ss = greedy_generate_static(m, prompts, [30] * 4, sync_every=4)
    assert static == outs and ss["generated_tokens"] == st["generated_tokens"]
    assert ss["steps"] <= 30 + 4  # stops at the first sync after every row ended


def test_static_decoder_serves_batch_after_batch():
    """One StaticDecoder decodes a full batch, then a shorter one (its spare row idle), with and
    without the EOS stop, on the same buffers; each batch's tokens are greedy_generate's. A
    batch with more rows or a longer cap than the buffers rebuilds them, keeping the larger of
    each size."""
    torch.manual_seed(1)
    m = EOSAfter7(get_model_config("tiny", block_size=32)).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 30, (n,), generator=g).tolist() for n in (9, 20, 14, 25, 5, 7)]
    prompts[4][-1] = 7  # emits EOS first
    caps = [40, 25, 30, 35, 20, 30]
    dec = StaticDecoder(m, amp=False, batch=3, capacity=40)
    step, runs, restarts = None, [], 0
    for rows, eos in ((slice(0, 3), False), (slice(3, 5), True), (slice(3, 5), False)):
        want, ws = greedy_generate(m, prompts[rows], caps[rows], stop_at_eos=eos)
        got, st = dec(prompts[rows], caps[rows], stop_at_eos=eos)
        assert got == want and st["restarts"] == ws["restarts"]
        assert step is None or dec.step is step  # the same buffers
        step, restarts = dec.step, restarts + st["restarts"]
        runs.append(got)
    assert runs[1][1] == [tk.EOS_ID] and len(runs[2][1]) == 20 and restarts > 0
    assert dec.step.max_new.tolist() == [35, 20, 0]  # the spare row never runs
    want, _ = greedy_generate(m, prompts, [45] * 6)
    assert dec(prompts, [45] * 6)[0] == want and dec.step is not step
    assert (dec.step.max_new.numel(), dec.step.capacity) == (6, 45)
    got, _ = dec(prompts[:2], caps[:2])  # smaller again: the grown buffers serve it
    assert got == greedy_generate(m, prompts[:2], caps[:2])[0] and dec.size == (6, 45)


def test_static_decoder_compiled_step():
    """``compile``: the step's forward through torch.compile with fixed shapes, one compiled
    graph per attention width made by ``prepare`` and none after (a shorter batch keeps its
    shapes), the same tokens as the eager decoder. The compiled step writes the KV cache in
    place: no kernel copies a cache back (with the layers as views of one tensor, Inductor
    copied the whole cache every step, 6x slower than eager on this CPU)."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    m = tiny(block_size=64).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 30, (n,), generator=g).tolist() for n in (20, 35, 50, 12, 40)]
    caps = [60, 90, 40, 70, 30]
    want, ws = greedy_generate(m, prompts, caps, stop_at_eos=False)
    torch._dynamo.reset()
    counters.clear()
    dec = StaticDecoder(m, compile=True, batch=3, capacity=90, width_buckets=2)
    _, code = run_and_get_code(dec.prepare)
    assert counters["stats"]["unique_graphs"] == len(dec.widths) == 2 and len(code) == 2
    assert not any("copy_" in c for c in code)
    out = [dec(prompts[i: i + 3], caps[i: i + 3], stop_at_eos=False) for i in (0, 3)]
    assert counters["stats"]["unique_graphs"] == 2  # no recompiles while decoding
    # nor for another compiled decoder of the model with the same sizes (bench eval's profile)
    StaticDecoder(m, compile=True, batch=3, capacity=90, width_buckets=2).prepare()
    assert counters["stats"]["unique_graphs"] == 2
    assert out[0][0] + out[1][0] == want and ws["restarts"] > 0
    assert all(sum(st["width_steps"][w] for _, st in out) > 0 for w in (32, 64))  # both ran
    with pytest.raises(ValueError, match="CUDA graphs of its own"):
        StaticDecoder(m, compile="reduce-overhead")


@pytest.mark.parametrize("pe", ["ape", "rpe", "rpb"])
def test_amp_weights_same_logits_without_weight_casts(pe, monkeypatch):
    """Under bf16 autocast, the copy holding its Linear weights and biases (the tied head too)
    in bf16 gives the model's logits bit for bit with one cast fewer per such tensor; the model
    stays fp32 with its head tied. A StaticDecoder steps on that copy where autocast is on
    (forced on the CPU here) and decodes the tokens of a decoder that casts as autocast does."""
    from tinytrace.evaluate import decode as D

    m = tiny(block_size=64, pe=pe, bias=True, rpe_clip=16, rpb_max_distance=32, rpb_buckets=8)
    twin = D.amp_weights(m, torch.bfloat16)
    x = torch.randint(3, 30, (2, 40), generator=torch.Generator().manual_seed(0))

    def run(net):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), \
                torch.profiler.profile() as prof:
            logits = net(x)[0]
        return logits, sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    (want, casts), (got, twin_casts) = run(m), run(twin)
    linear = [t for mod in m.modules() if isinstance(mod, torch.nn.Linear)
              for t in (mod.weight, mod.bias) if t is not None]
    assert torch.equal(got, want) and casts - twin_casts == len(linear) > 10
    # and a decode step's: prefill a KV cache, then one token at a fixed width, as the step runs
    logits = []
    for net in (m, twin):
        cache = m.new_kv_cache(2, dtype=torch.bfloat16)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            net(x, kv_cache=cache)
            logits.append(net(x[:, -1:], kv_cache=cache, static=True, width=48)[0])
    assert torch.equal(*logits)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert m.lm_head.weight is m.transformer.wte.weight
    assert twin.lm_head.weight.dtype == torch.bfloat16 == twin.transformer.h[0].mlp.c_fc.bias.dtype
    assert twin.transformer.wte.weight.dtype == torch.float32  # embeddings looked up as before

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 30, (n,), generator=g).tolist() for n in (20, 35)]
    assert StaticDecoder(m, batch=2, capacity=30).step_fwd is m  # no autocast on a CPU
    monkeypatch.setattr(D, "autocast_dtype", lambda device: torch.bfloat16)
    dec, plain = StaticDecoder(m, batch=2, capacity=30), StaticDecoder(m, cast_weights=False)
    assert dec.step_fwd.lm_head.weight.dtype == torch.bfloat16 and plain.step_fwd is m
    out = dec(prompts, [30, 30], stop_at_eos=False)[0]
    assert dec.step.fwd is dec.step_fwd  # what the steps ran
    assert out == plain(prompts, [30, 30], stop_at_eos=False)[0] and len(out[1]) == 30
    # a forward of the caller's is kept (e.g. evaluate's compiled one): no copy
    fwd = partial(m.forward)
    assert StaticDecoder(m, fwd=fwd).step_fwd is fwd


def test_static_step_frozen_changes_no_row(rows):
    """The warm-up and capture of a width's CUDA graph run the step with every row frozen:
    afterwards every row decodes on exactly as without them."""
    from tinytrace.evaluate.decode import _StaticStep, attention_widths

    assert attention_widths(512, 4) == [128, 256, 384, 512] and attention_widths(64, 1) == [64]
    assert attention_widths(100, 3) == [40, 72, 100]
    with pytest.raises(ValueError, match="width_buckets"):
        attention_widths(512, 0)
    m = tiny(block_size=64)
    prompts = [r.prompt_ids[:20] for r in make_records(rows[:3])]
    runs = []
    for warm in (False, True):
        cache = m.new_kv_cache(3)
        step = _StaticStep(m, cache, 40, torch.device("cpu"), amp=False, graph=False)
        step.reset([40] * 3, stop_at_eos=True)
        logits = _last_logits_for(m, prompts, cache)
        step.tok[:, 0] = step.out[:, 0] = logits.argmax(-1)
        step.opos.fill_(1)
        step.active.fill_(True)
        for i in range(8):  # no row reaches 40 tokens: any extra step would show
            if warm and i in (0, 5):
                with step.frozen():
                    step._run(64)
                    step._run(32)
                assert bool(step.active.all())
            step(64)
        # every column but the spare one inactive rows write to
        runs.append((step.out[:, :-1].clone(), step.tok.clone(), cache.lens.clone(), step.opos.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and runs[0][3].tolist() == [9] * 3
    with pytest.raises(ValueError, match="static"):  # a narrower width only where rows are frozen
        m(step.tok, kv_cache=cache, width=32)


def _last_logits_for(m, prompts, cache):
    from tinytrace.evaluate.decode import _last_logits

    logits = _last_logits(m, prompts, torch.device("cpu"), kv_cache=cache)
    cache.set_lens(list(range(len(prompts))), [len(p) for p in prompts])
    return logits


def test_static_decode_in_evaluate(rows):
    """evaluate(decode="static") (the GPU path, run eagerly here) scores exactly as the dynamic
    decoder, through window restarts and EOS; bad values are refused."""
    m = tiny(block_size=96, pe="rpb")
    recs = make_records(rows[:12])
    da, a = evaluate(m, recs, batch_size=5, decode="dynamic", teacher_forcing=False)
    df, b = evaluate(m, recs, batch_size=5, decode="static", teacher_forcing=False)
    assert b["decode"] == "static" and a["decode"] == "dynamic"
    assert (a["generated_tokens"], a["window_restarts"]) == (b["generated_tokens"], b["window_restarts"])
    assert a["window_restarts"] > 0 and len(df) == 12
    # row by row, not only in total: each row's own prediction (a random model's differ)
    assert df["prediction"].nunique() > 1
    assert df.sort_values("index")["prediction"].tolist() == da.sort_values("index")["prediction"].tolist()
    with pytest.raises(ValueError, match="decode"):
        evaluate(m, recs, decode="graph")
    # rows whose window fills wait and re-encode together: fewer forwards, the same tokens
    prompts, caps = [r.prompt_ids for r in recs], [200] * len(recs)
    ref, sr = greedy_generate(m, prompts, caps, stop_at_eos=False)
    out, so = greedy_generate_static(m, prompts, caps, stop_at_eos=False, restart_wait=16)
    assert out == ref and so["restarts"] == sr["restarts"] > 0
    assert so["restart_batches"] < so["restarts"] / 2


def test_cli_eval_json(tmp_path, data_dir, capsys):
    save_checkpoint(tiny(), tmp_path / "run")
    args = ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data_dir), "--config", "base",
            "--split", "test", "--limit", "2", "--batch-size", "2", "--max-len-factor", "0.2",
            "--json", "--out", str(tmp_path / "res")]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 2 and res["exact_match"] == 0.0 and "step_em_tf" in res
    assert (tmp_path / "res" / "records.jsonl").read_text().count("\n") == 2
    assert json.loads((tmp_path / "res" / "summary.json").read_text())["model"]["n_layer"] == 2
    cfg = tmp_path / "run" / "config.json"
    cfg.write_text(cfg.read_text().replace('"z"', '"Z"'))
    assert main(args) == 2
    assert "vocab" in capsys.readouterr().err


def test_bench_eval(data_dir, monkeypatch):
    kw = dict(model="tiny", checkpoint=None, limit=3, batch_size=2, device="cpu", data=str(data_dir),
              config="base", max_new_tokens=24)
    res = bench_eval(**kw)
    assert res["outputs_equal"] and res["generated_tokens"] == 72 and res["speedup"] > 0
    res = bench_eval(**kw, modes="static,cached,static-full")
    assert res["modes"] == ["static", "cached", "static-full"] and res["outputs_equal"]
    assert res["static_seconds"] > 0 and res["warmup_seconds"] > 0
    # each mode first decodes 8 tokens of the first batch, untimed (the process's start-up)
    import tinytrace.evaluate.bench as B

    caps, prepared = [], []
    real, real_prepare = B.StaticDecoder.__call__, B.StaticDecoder.prepare
    monkeypatch.setattr(B.StaticDecoder, "__call__", lambda d, p, c, **kw: caps.append(max(c))
                        or real(d, p, c, **kw))
    monkeypatch.setattr(B.StaticDecoder, "prepare", lambda d: prepared.append(caps[:])
                        or real_prepare(d))
    res2 = bench_eval(**kw, modes="static,static-full")
    assert caps == [8, 8, 24, 24, 24, 24]  # warm-ups, then 2 batches a mode
    assert prepared == [[], [8]]  # each mode's decoder prepares its widths before its warm-up
    assert res2["static_prepare_seconds"] > 0 and res2["static-full_prepare_seconds"] > 0
    # static-compiled: the step's forward through torch.compile (a recording stand-in here;
    # test_static_decoder_compiled_step compiles for real), prompts encoded eagerly
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(kw) or m)
    res3 = bench_eval(**kw, modes="static,static-compiled")
    assert compiled == [{"dynamic": False, "mode": None}] and res3["outputs_equal"]
    assert res3["static-compiled_steps"]["steps"] == res3["static_steps"]["steps"]
    # static-autocast: the step on the fp32 model, casting under autocast (forced on here)
    with monkeypatch.context() as mp:
        mp.setattr("tinytrace.evaluate.decode.autocast_dtype", lambda device: torch.bfloat16)
        assert bench_eval(**kw, modes="static,static-autocast")["outputs_equal"]
    prof = bench_eval(**kw, modes="cached,static-compiled", profile_steps=8)["profile"]
    assert prof["mode"] == "static-compiled" and prof["steps"] == 8  # the first static mode
    st, full = res["static_steps"], res["static-full_steps"]
    # 2 batches, each row's first token from its prompt: every other step at one width
    assert st["steps"] == full["steps"] and sum(st["width_steps"].values()) == st["steps"] - 2
    assert list(full["width_steps"]) == [512] and st["width_steps"][128] > 0
    # rows that run to their caps end the batch there, not at the next sync (every 32 steps)
    assert st["steps"] == 2 * 24 and st["graphs"] == 0  # no CUDA graphs on the CPU
    # the phases of one profiled batch: its prompts' prefill, a step per token after the first
    prof = bench_eval(**kw, modes="static", profile_steps=8)["profile"]
    assert (prof["rows"], prof["steps"], prof["device"], prof["graphs"]) == (2, 8, "cpu", 0)
    assert prof["phases"]["static.prefill"]["calls"] == 1
    assert prof["phases"]["static.step"]["calls"] == 7  # and one sync, where the caps end
    assert prof["phases"]["static.sync"]["calls"] == 1
    assert prof["top"] and prof["device_ms_total"] >= prof["top"][0]["ms"] > 0
    assert prof["mode"] == "static"
    monkeypatch.setattr(torch.profiler, "profile", None)  # a profiler that fails
    res = bench_eval(**kw, modes="static", profile_steps=8)
    assert res["profile"]["error"].startswith("TypeError") and res["static_seconds"] > 0
    with pytest.raises(ValueError, match="modes"):
        bench_eval(**kw, modes="fast")
    with pytest.raises(ValueError):
        bench_eval(**{**kw, "limit": 0})
