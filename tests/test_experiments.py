import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tinytrace.experiments import (
    EXPERIMENTS,
    SCALES,
    curriculum_counts,
    get_scale,
    mix_corpus,
    run_experiment,
    scale_table,
)
from tinytrace.data import read_split
from tinytrace.evaluate import METRICS
from tinytrace.experiments.cache import Cache
from tinytrace.experiments.scales import _drawn_label
from tinytrace.lang.config import sample_pairs
from tinytrace.lang.edits import EDIT_NAMES
from tinytrace.report import paper

COLUMNS = {"experiment", "model", "test_set", "condition", "exact_match", "n", "step_em_tf",
           "final_state_match", "state_token_acc", "scale", "hardware"}
EXPECTED_ROWS = {
    "base": 3,
    "id_robustness": 2 * 2 * 11,  # corpora x epochs x (base + 5 edits x {full, correct})
    # scopes x exclusion % x {allowed, excluded, the reference model on excluded}
    "pair_coverage": 2 * 2 * 3,
    "depth_curriculum": 2 * 5,  # p values x test sets
    "sft_lora": 3 + 3,  # pre-trained + one fine-tuned model, 3 test sets each
    "pe_ablation": 3 * 3,
}


def _by(df, *keys):
    return {tuple(r[k] for k in keys): r for r in df.to_dict("records")}


def _same_scores(row, result) -> bool:
    """Whether a row reports ``result``'s scores: every metric, not exact match alone (every
    smoke model traces 0% exactly, so EM cannot tell two of them apart; the state-token
    accuracy and teacher-forced step EM can)."""
    return all(row[k] == result[k] or (pd.isna(row[k]) and pd.isna(result[k])) for k in METRICS)


def _check_contents(name, df, smoke_cache):
    """What each runner must produce at smoke scale (test size 8): its test sets, conditions
    and counts, and the values that must agree with the other experiments' (same model and
    data: the same cached evaluation)."""
    s = get_scale("smoke")
    n = s.test_size
    if name == "base":
        assert list(df["test_set"]) == ["id", "longer", "deeper"] and (df["model"] == "base").all()
        assert (df["n"] == n).all() and "clip_rate" in df
    elif name == "id_robustness":
        assert set(df["epoch"]) == {1, 2} and set(df["subset"]) == {"full", "correct"}
        assert set(df["corpus_snippets"]) == {240, 120} and set(df["corpus"]) == {"240", "120"}
        assert set(df["edit"]) == {"none", *EDIT_NAMES}
        for (corpus, epoch), g in df.groupby(["corpus", "epoch"]):
            base = g[g["edit"] == "none"].iloc[0]
            assert base["n"] == n and base["subset"] == "full"
            correct = round(base["exact_match"] * n)
            for _, r in g[g["edit"] != "none"].iterrows():
                assert r["n"] <= (n if r["subset"] == "full" else correct), (corpus, epoch, r["edit"])
    elif name == "pair_coverage":
        alphabet = s.generator("id").variables
        assert set(df["scope"]) == set(s.scopes) and set(df["exclusion_pct"]) == {50, 100}
        assert set(df["test_set"]) == {"allowed", "excluded", "excluded-base"} and (df["n"] == n).all()
        for pct, g in df.groupby("exclusion_pct"):
            assert (g["n_forbidden"] == len(sample_pairs(pct, seed=0, alphabet=alphabet))).all()
            assert (g["condition"] == f"{pct}%").all()
        # the reference rows come last and are the reference model's, on each run's excluded set
        ref = df[df["test_set"] == "excluded-base"]
        assert (ref["model"] == "reference").all() and ref.index.min() > df[df["test_set"] != "excluded-base"].index.max()
        excluded = df[df["test_set"] == "excluded"]
        assert list(zip(ref["scope"], ref["exclusion_pct"])) == list(
            zip(*[excluded[c] for c in ("scope", "exclusion_pct")]))
        # the same sets, other models: the reference's scores differ from each exclusion run's
        assert not any(_same_scores(a, b) for (_, a), (_, b) in zip(ref.iterrows(), excluded.iterrows()))
    elif name == "depth_curriculum":
        tests = [s.generator(r).name for r in ("curriculum", "depth-3", "depth-4", "depth-5", "depth-6")]
        assert list(df["test_set"]) == tests * 2 and list(df["p"]) == [0] * 5 + [50] * 5
        assert (df["n"] == n).all()
        # trained on depths 0-2, plus 3-4 at p = 50; a clip rate where a depth set goes deeper
        # than its bound (the smoke models fail every trace that deep)
        assert list(df["trained_depth"]) == [2] * 5 + [4] * 5
        cur = df.set_index(["p", "test_set"])
        for p, trained in ((0, 2), (50, 4)):
            for ts in tests[1:]:
                deeper = int(ts.split("-")[1]) - trained
                assert pd.notna(cur.loc[(p, ts), "clip_rate"]) == (deeper > 0), (p, ts)
                assert pd.notna(cur.loc[(p, ts), "clip_rate_next"]) == (deeper > 1), (p, ts)
    elif name == "sft_lora":
        pre, ft = df[df["model"] == "pre-trained"], df[df["model"] == "fine-tuned"]
        assert list(pre["test_set"]) == list(ft["test_set"]) == ["id", "deeper", "longer"]
        assert (ft["data_size"] == 64).all() and (ft["sft_epochs"] == 1).all()
        assert (ft["trainable_params"] > 0).all() and (pre["trainable_params"] == 0).all()
        assert ft["best_val_loss"].notna().all() and (df["n"] == n).all()
        # the fine-tuning data holds no snippet of the test sets it is evaluated beside
        from tinytrace.experiments.cache import _Context
        from tinytrace.experiments.runners import _sft_data, _sft_finetune, _sft_tests

        ctx = _Context(s, smoke_cache, 0, False)
        data = _sft_data(ctx, s.sft_sizes[0])
        tests = {r["sha256"] for _, c in _sft_tests(ctx) for r in read_split(*c, columns=("sha256",))}
        for split in ("train", "validation"):
            assert not tests & {r["sha256"] for r in read_split(*data, split, columns=("sha256",))}
        # the run validates on as many examples as its config asks for: the split holds them
        assert _sft_finetune(ctx, 64, 1)[1]["val_examples"] == s.sft.val_examples == 16
        base = _by(run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False), "test_set")
        for _, r in pre.iterrows():  # the pre-trained model is the base model
            assert _same_scores(r, base[(r["test_set"],)])
        # (at smoke the fine-tuning changes no greedy output, so the scores cannot tell the
        # fine-tuned model from the base model: test_sft_rows_evaluate_the_fine_tuned_model)
    elif name == "pe_ablation":
        assert list(df["model"]) == ["ape"] * 3 + ["rpe"] * 3 + ["rpb"] * 3
        assert list(df["test_set"]) == ["id", "longer", "deeper"] * 3 and (df["n"] == n).all()
        params = df.groupby("model")["params"].first()
        assert (abs(params / params["ape"] - 1) < 0.06).all()
        base = _by(run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False), "test_set")
        for _, r in df[df["model"] == "ape"].iterrows():  # smoke's own encoding: the base model
            assert _same_scores(r, base[(r["test_set"],)])
        ape, rpe = (df[df["model"] == m].iterrows() for m in ("ape", "rpe"))
        assert not all(_same_scores(a, b) for (_, a), (_, b) in zip(ape, rpe))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_at_smoke_scale(name, smoke_cache, tmp_path):
    df = run_experiment(name, "smoke", out=tmp_path, cache_dir=smoke_cache, progress=False)
    assert COLUMNS <= set(df.columns)
    assert len(df) == EXPECTED_ROWS[name]
    assert (df["experiment"] == name).all() and (df["scale"] == "smoke").all()
    _check_contents(name, df, smoke_cache)
    saved = pd.read_csv(tmp_path / "results.csv")
    assert list(saved.columns) == list(df.columns) and list(saved["n"]) == list(df["n"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == name and config["scale"]["name"] == "smoke"
    assert config["scale"]["train"] == get_scale("smoke").train.to_dict()


def test_sft_rows_evaluate_the_fine_tuned_model(smoke_cache, monkeypatch):
    """Each row's evaluation is of the model it names: the calls show which run's weights were
    evaluated and under which run the result is cached (the scores cannot show it at smoke)."""
    from tinytrace.experiments.cache import _Context
    from tinytrace.model import load_checkpoint
    from tinytrace.experiments.runners import _sft_finetune

    calls, real = [], _Context.eval

    def spy(self, model, run_dir, data, data_key, require=()):
        calls.append((Path(model.run_dir), Path(run_dir), data_key))
        return real(self, model, run_dir, data, data_key, require)

    monkeypatch.setattr(_Context, "eval", spy)
    df = run_experiment("sft_lora", "smoke", cache_dir=smoke_cache, progress=False)
    ctx = _Context(get_scale("smoke"), smoke_cache, 0, False)
    base, (tuned, _) = ctx.base_run(), _sft_finetune(ctx, 64, 1)
    assert tuned != base and len(calls) == len(df) == 6
    assert [c[2] for c in calls[:3]] == [c[2] for c in calls[3:]]  # the same three test sets
    for (weights, cached_as, _), model in zip(calls, df["model"]):
        assert weights == cached_as == (base if model == "pre-trained" else tuned), model
    # and the fine-tuned weights are not the base model's
    wb, wt = load_checkpoint(base).state_dict(), load_checkpoint(tuned).state_dict()
    assert any(not torch.equal(wb[k], wt[k]) for k in wb)


def test_coverage_reference_is_trained_as_long_as_the_exclusion_runs(smoke_cache):
    """Where the exclusion runs get other epochs than the base run, their reference (rows
    ``excluded-base``) is the base recipe on the base corpus at those epochs, not the base
    model: a share of a model trained longer would understate coverage."""
    s = dataclasses.replace(get_scale("smoke"), coverage_epochs=2, exclusion_pcts=(100,),
                            scopes=("global",))
    df = run_experiment("pair_coverage", s, cache_dir=smoke_cache, progress=False)
    assert list(df["test_set"]) == ["allowed", "excluded", "excluded-base"]
    from tinytrace.experiments.cache import _Context
    from tinytrace.experiments.runners import _coverage_corpus, _coverage_reference, _coverages

    ctx = _Context(s, smoke_cache, 0, False, train_missing=False)
    ref, recipe = ctx.cache.run_dir(s, ctx.base_corpus(), s.model_config(), s.recipe(2))
    assert recipe.epochs == 2 and (ref / "done.json").exists()  # trained by the experiment
    assert json.loads((ref / "config.json").read_text())["train"]["epochs"] == 2
    # its evaluation on the excluded set is cached under its own run (no model needed) and is
    # what the rows report
    (cov,) = _coverages(s, 0)
    test = ctx.cache.test_set(cov.excluded, s.test_size, 0, s.context)
    assert _same_scores(df.iloc[2], ctx.eval_set(None, ref, test))
    # the exclusion run trained for those epochs too
    run, _ = ctx.cache.run_dir(s, _coverage_corpus(ctx, cov), s.model_config(), s.recipe(2),
                               tag="coverage-global-100")
    assert (run / "done.json").exists()
    # without coverage epochs of its own, the reference is the base run
    plain = _Context(get_scale("smoke"), smoke_cache, 0, False)
    assert _coverage_reference(plain) == plain.base_run()


def test_a_drawn_point_is_trained_again_at_the_next_seed_with_its_own_reference(smoke_cache):
    """A scale's ``coverage_drawn`` points get ``coverage_draws`` draws: the further draws'
    runs (and references) are training runs of their own, at the next seeds, and add rows with
    their seed after the first draw's; the verdicts pool them."""
    from tinytrace.experiments.analysis import draws, excluded_curve
    from tinytrace.experiments.cache import _Context
    from tinytrace.experiments.runners import (_coverage_corpus, _coverage_reference, _coverage_run,
                                               _coverages, evaluate_trained, training_runs)

    s = dataclasses.replace(get_scale("smoke"), exclusion_pcts=(50, 100), scopes=("global",),
                            coverage_draws=2, coverage_drawn=("global-50",))
    labels = [r.label for r in training_runs("pair_coverage", s)]
    assert labels == ["coverage-global-50", "coverage-global-100", "coverage-global-50-seed1",
                      "coverage-reference-seed1"]
    df = run_experiment("pair_coverage", s, cache_dir=smoke_cache, progress=False)
    first, second = df[df["seed"] == 0], df[df["seed"] == 1]
    assert list(first["test_set"]) == ["allowed", "excluded", "allowed", "excluded",
                                       "excluded-base", "excluded-base"]
    assert list(second["test_set"]) == ["allowed", "excluded", "excluded-base"]
    assert (second["exclusion_pct"] == 50).all() and second.index.min() > first.index.max()
    # the runs the training list names are the ones the rows report (cached evaluations)
    ctx = _Context(s, smoke_cache, 0, False, train_missing=False)
    runs = training_runs("pair_coverage", s)
    at1 = ctx.at_seed(1)
    (cov,) = [c for c in _coverages(s, 1) if c.pct == 50]
    test = at1.cache.test_set(cov.excluded, s.test_size, 1, s.context)
    # another draw of the pairs, so another excluded-pairs test
    assert [c.pairs for c in _coverages(s, 0) if c.pct == 50] != [cov.pairs]
    assert runs[2].train(ctx) == _coverage_run(at1, cov)
    assert runs[3].train(ctx) == _coverage_reference(at1) != _coverage_reference(ctx)
    assert _same_scores(second.iloc[1], at1.eval_set(None, runs[2].train(ctx), test))
    assert _same_scores(second.iloc[2], at1.eval_set(None, runs[3].train(ctx), test))
    # the curve pools the two draws of 50% (the mean EM); each draw is paired with its reference
    pcts, ems, _, _ = excluded_curve(df, "global")
    ex = df[(df["test_set"] == "excluded") & (df["exclusion_pct"] == 50)]["exact_match"]
    ref = df[(df["test_set"] == "excluded-base") & (df["exclusion_pct"] == 50)]["exact_match"]
    assert pcts == [50, 100] and ems[0] == pytest.approx(ex.mean())
    assert draws(df, "global")[50] == dict(zip([0, 1], zip(ex, ref)))
    assert list(draws(df, "global")[100]) == [0]
    # an evaluate-only pass evaluates every draw where all are trained, and stops at the
    # first run that is not (a third draw)
    assert evaluate_trained("pair_coverage", s, smoke_cache, progress=False) == \
        "evaluated every run of pair_coverage"
    third = dataclasses.replace(s, coverage_draws=3)
    at2 = ctx.at_seed(2)
    (cov2,) = [c for c in _coverages(s, 2) if c.pct == 50]
    missing, _ = at2.cache.run_dir(s, _coverage_corpus(at2, cov2), s.model_config(),
                                   s.recipe(s.coverage_epochs), tag="coverage-global-50")
    assert evaluate_trained("pair_coverage", third, smoke_cache, progress=False) == (
        f"evaluated the trained runs of pair_coverage before {missing.name}, which is not trained")
    with pytest.raises(ValueError, match="coverage_drawn"):
        dataclasses.replace(s, coverage_drawn=("assignment-50",))  # not a point of the grid


def test_the_training_runs_of_further_draws_are_listed_in_the_runners_order(monkeypatch, tmp_path):
    """Each draw's runs, then its reference, as the runner trains them (a slot evaluates its
    runs in that order), and as many token counts as runs. Cache and evaluation are faked:
    only the order of the runs asked for is recorded."""
    from tinytrace.experiments import run_tokens
    from tinytrace.experiments.cache import Cache, _Context, _key
    from tinytrace.experiments.runners import exp_pair_coverage, training_runs

    asked = []

    def fake_run(self, scale, corpus, model_cfg, callbacks=(), train=None, tag=""):
        asked.append((corpus[0].name, tag))
        return Path(f"run-{len(asked)}")

    monkeypatch.setattr(Cache, "corpus", lambda self, gen, n, *a, seed=0, **k: (
        Path(f"corpus-{_key([gen.to_dict(), n, seed])}"), "data"))
    monkeypatch.setattr(Cache, "run", fake_run)
    monkeypatch.setattr(_Context, "eval_set", lambda *a, **k: {"exact_match": 0.5})
    s = dataclasses.replace(get_scale("gpu"), coverage_draws=3, coverage_drawn=("global-10", "global-50"))
    runs = training_runs("pair_coverage", s)
    assert [r.label for r in runs][-6:] == [
        "coverage-global-10-seed1", "coverage-global-50-seed1", "coverage-reference-seed1",
        "coverage-global-10-seed2", "coverage-global-50-seed2", "coverage-reference-seed2"]
    ctx = _Context(s, tmp_path, 0, False)
    for r in runs:
        r.train(ctx)
    listed, asked[:] = list(asked), []
    exp_pair_coverage(ctx)
    by_runner = list(dict.fromkeys(asked))  # the first draw's reference (the base run) last
    assert by_runner[:12] == listed[:12] and by_runner[13:] == listed[12:]
    assert by_runner[12] == (ctx.base_corpus()[0].name, "")
    for scale in (s, "gpu", "paper"):  # one token count per run, every experiment
        assert {k: len(v) for k, v in run_tokens(scale).items()} == {
            k: len(training_runs(k, scale)) for k in EXPERIMENTS}
    # a curriculum run counts the injected (deeper, longer) snippets at their own length
    from tinytrace.experiments.scales import tokens_per_example

    tok, gpu = tokens_per_example(), get_scale("gpu")
    assert gpu.curriculum_ps[0] == 0 and gpu.curriculum_ps[-1] == 100
    first, *_, last = run_tokens(gpu)["depth_curriculum"]
    n = gpu.corpus_snippets * gpu.curriculum_corpus * gpu.recipe(gpu.curriculum_epochs).epochs
    assert first == pytest.approx(n * tok["curriculum"])
    assert last == pytest.approx(n * (tok["inject-6"] + tok["inject-7"]) / 2)
    assert tok["inject-6"] > tok["curriculum"]
    # at the paper-task scales each exclusion run trains as long as its reference, the base
    # run (Sec. 4.2: as large a corpus): a shortfall is then the excluded pairs', not the data's
    for scale in ("gpu", "paper"):
        runs = run_tokens(scale)
        assert set(runs["pair_coverage"]) == set(runs["base"])


def test_cached_rerun_is_identical(smoke_cache, tmp_path):
    a = run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False)
    b = run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False)
    assert a.drop(columns="hardware").equals(b.drop(columns="hardware"))


def test_scales_table():
    t = scale_table()
    assert list(t["scale"]) == ["smoke", "cpu", "cpu-long", "gpu", "paper"]
    p = get_scale("paper")
    assert p.corpus_snippets == 3_000_000 and p.model == "paper" and p.train.epochs == 4
    assert p.robustness_corpora == (1.0, 0.5, 0.25, 0.125) and p.robustness_epochs == 8
    assert p.exclusion_pcts == (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 96, 97, 98, 99, 100)
    assert p.curriculum_ps == (0, 1, 5, 10, 20, 40, 60, 80, 100)
    with pytest.raises(ValueError, match="unknown scale"):
        get_scale("huge")
    assert set(SCALES) == {"smoke", "cpu", "cpu-long", "gpu", "paper"}


def test_cpu_long_is_cpu_with_each_experiments_runs_on_the_papers_corpus_fractions(tmp_path):
    """`cpu-long` changes only the corpora of the robustness runs (the paper's 1, 1/2, 1/4, 1/8
    of the base corpus, Sec. 4.1), of the exclusion and curriculum runs (the base model's, as
    Sec. 4.2 and 4.3.1), adds 10% and 30% exclusion points (each drawn five times) and trains the
    base and curriculum runs for 2 epochs while the exclusion runs keep `cpu`'s 1; a run's cache
    key does not contain the scale's name, so every run of the same recipe is the same folder in
    a shared cache."""
    cpu, long = get_scale("cpu"), get_scale("cpu-long")
    changed = {f.name for f in dataclasses.fields(cpu) if getattr(cpu, f.name) != getattr(long, f.name)}
    assert changed == {"name", "description", "train", "coverage_corpus", "coverage_epochs",
                       "curriculum_corpus", "robustness_corpora",
                       "exclusion_pcts", "coverage_draws", "coverage_drawn"}
    assert long.train == dataclasses.replace(cpu.train, epochs=2) and cpu.train.epochs == 1
    assert long.coverage_corpus == long.curriculum_corpus == 1.0
    assert cpu.coverage_corpus < 1 and cpu.curriculum_corpus < 1
    assert long.robustness_corpora == get_scale("paper").robustness_corpora
    assert long.robustness_epochs == cpu.robustness_epochs == 2
    assert long.exclusion_pcts == (10, 30) + cpu.exclusion_pcts
    row = scale_table().set_index("scale").loc["cpu-long"]
    assert row["epochs"] == 2
    assert row["robustness corpora x epochs"] == "1, 0.5, 0.25, 0.125 x 2"
    assert long.coverage_draws == 5
    assert sorted(long.coverage_drawn) == sorted(f"{scope}-{pct}" for scope in long.scopes
                                                 for pct in long.exclusion_pcts)
    assert row["exclusion %"] == "10, 30, 60, 90, 100; every point (x5)"
    some = dataclasses.replace(long, coverage_drawn=("assignment-90", "global-30"))
    assert _drawn_label(some) == "; assignment 90 (x5); global 30 (x5)"
    assert _drawn_label(dataclasses.replace(some, coverage_draws=1)) == ""
    assert row["exclusion / curriculum corpus x epochs"] == "1 x 1 / 1 x 2"
    cache = Cache(tmp_path)
    corpus = (tmp_path / "corpus-0123", "data")

    def key(s, epochs=None, tag=""):
        return cache.run_dir(s, corpus, s.model_config(), s.recipe(epochs), tag)

    assert key(cpu) != key(long)  # the base runs: 1 and 2 epochs
    assert key(long) == key(cpu, 2)
    assert key(long, long.coverage_epochs, "coverage-global-60") == key(cpu, None, "coverage-global-60")
    assert key(long, long.curriculum_epochs, "curriculum-0") == key(cpu, 2, "curriculum-0")
    assert key(long, long.robustness_epochs, "id_robustness") == key(cpu, cpu.robustness_epochs,
                                                                     "id_robustness")


@pytest.mark.parametrize("name", [n for n in SCALES if n != "cpu-long"])
def test_the_exclusion_and_curriculum_runs_keep_the_base_recipe_where_the_scale_says_nothing(name):
    """Only `cpu-long` gives its exclusion runs other epochs: every other scale's runs keep the
    very recipe (and so the cache keys) they had before the fields existed."""
    from tinytrace.experiments.cache import settings

    s = get_scale(name)
    assert s.recipe(s.coverage_epochs) is s.train and s.recipe(s.curriculum_epochs) is s.train
    assert settings(s.recipe(s.train.epochs)) == settings(s.train)
    assert s.recipe(s.train.epochs + 1).epochs == s.train.epochs + 1


def test_curriculum_runs_train_for_the_curriculum_epochs(smoke_cache, monkeypatch):
    from tinytrace.experiments.cache import _Context
    from tinytrace.experiments.runners import _curriculum_run

    s = dataclasses.replace(get_scale("smoke"), curriculum_epochs=3)
    ctx = _Context(s, smoke_cache, 0, False)
    asked = {}
    monkeypatch.setattr(ctx.cache, "run", lambda *a, train=None, tag="", **k: asked.update(
        train=train, tag=tag) or smoke_cache)
    _curriculum_run(ctx, 0)
    assert asked["train"] == dataclasses.replace(s.train, epochs=3) and asked["tag"] == "curriculum-0"


def test_the_injected_depths_are_built_as_large_as_the_largest_p_takes(tmp_path, monkeypatch):
    """p = 100 takes half the curriculum corpus's size of each injected depth: those corpora
    hold that and 8 more, and the mix is written from them."""
    from tinytrace.experiments.cache import _Context
    from tinytrace.experiments.runners import _curriculum_corpora, _curriculum_run

    s = dataclasses.replace(get_scale("smoke"), curriculum_ps=(0, 100))
    ctx = _Context(s, tmp_path, 0, False)
    mixed = {}
    monkeypatch.setattr(ctx.cache, "run", lambda _s, corpus, *a, **k: mixed.update(c=corpus))
    _curriculum_run(ctx, 100)
    _, extra, n_train = _curriculum_corpora(ctx)
    built = {r: read_split(*c, "train", columns=("sha256",)) for r, c in extra.items()}
    assert {r: len(rows) for r, rows in built.items()} == {
        r: k + 8 for r, k in curriculum_counts(n_train, 100, list(extra)).items() if r in extra}
    assert len(read_split(*mixed["c"], "train", columns=("sha256",))) == n_train


@pytest.mark.parametrize("p", [0, 1, 5, 10, 20, 40, 60, 80, 100])
def test_curriculum_mix_has_the_requested_fractions(p, tmp_path):
    counts = curriculum_counts(1000, p, ["inject-6", "inject-7"])
    assert sum(counts.values()) == 1000
    assert counts["inject-6"] + counts["inject-7"] == round(10 * p)
    assert abs(counts["inject-6"] - counts["inject-7"]) <= 1


def test_mix_corpus(tmp_path, monkeypatch):
    from tinytrace.data import BuildConfig, build, token_stream
    from tinytrace.experiments import runners
    from tinytrace.lang import tokenizer as tk
    from tinytrace.lang.config import get_preset

    monkeypatch.setattr(runners, "WRITE_BYTES", 5_000)  # written in pieces, as a large corpus is

    build(BuildConfig(get_preset("base"), num_snippets=120, test_size=10, validation_size=10,
                          config_name="a"), tmp_path / "a", workers=1, progress=False)
    build(BuildConfig(get_preset("depth-6"), num_snippets=40, test_size=0, validation_size=0,
                          config_name="b"), tmp_path / "b", workers=1, progress=False)
    out, cfg = mix_corpus([(tmp_path / "a", "a", 90), (tmp_path / "b", "b", 10)], tmp_path / "mix")
    train = pq.read_table(out / cfg / "train-00000-of-00001.parquet").to_pydict()
    assert len(train["code"]) == 100 and sum(d == 6 for d in train["max_depth"]) == 10
    assert pq.read_table(out / cfg / "test-00000-of-00001.parquet").num_rows == 10
    stream = token_stream(out, cfg, "train")
    assert len(stream) == sum(train["n_tokens"])
    # each row's tokens are its own trace's, in the rows' order; the corpora's own schema
    ends = np.cumsum(train["n_tokens"])
    assert all(list(stream[e - n:e]) == tk.encode(t) + [tk.EOS_ID]
               for e, n, t in zip(ends, train["n_tokens"], train["trace"]))
    source = pq.read_schema(tmp_path / "a" / "a" / "train-00000-of-00001.parquet")
    assert pq.read_schema(out / cfg / "train-00000-of-00001.parquet").equals(source,
                                                                          check_metadata=True)
    # excluded snippets leave every split; the stream still matches the rows
    a_train = pq.read_table(tmp_path / "a" / "a" / "train-00000-of-00001.parquet").to_pydict()
    a_val = pq.read_table(tmp_path / "a" / "a" / "validation-00000-of-00001.parquet").to_pydict()
    exclude = frozenset(a_train["sha256"][:5] + a_val["sha256"][:3])
    out, cfg = mix_corpus([(tmp_path / "a", "a", 90)], tmp_path / "mix-x", exclude=exclude)
    train = pq.read_table(out / cfg / "train-00000-of-00001.parquet").to_pydict()
    val = pq.read_table(out / cfg / "validation-00000-of-00001.parquet").to_pydict()
    assert len(train["code"]) == 90 and len(val["code"]) == 7
    assert not exclude & set(train["sha256"] + val["sha256"])
    assert len(token_stream(out, cfg, "train")) == sum(train["n_tokens"])
    assert len(token_stream(out, cfg, "validation")) == sum(val["n_tokens"])
    with pytest.raises(ValueError, match="outside the excluded sets"):
        mix_corpus([(tmp_path / "a", "a", 98)], tmp_path / "mix-y", exclude=exclude)


def test_a_mix_of_over_2_gib_of_traces_is_written(tmp_path):
    """A `paper`-scale injected-depth corpus holds more than 2 GiB of traces, where a `take` on
    32-bit string offsets fails. The mix is written in the corpora's schema, in its order."""
    n, width = 120_000, 18_000  # 2.16e9 bytes: two chunks sharing one buffer of zeros
    half = n // 2
    offsets = pa.py_buffer(np.arange(0, half * width + 1, width, dtype=np.int32))
    chunk = pa.StringArray.from_buffers(half, offsets, pa.py_buffer(bytes(half * width)))
    table = pa.table({"trace": pa.chunked_array([chunk, chunk]), "i": np.arange(n),
                      "sha256": [str(i) for i in range(n)]})
    part = tmp_path / "deep" / "data"
    (part / "tokens").mkdir(parents=True)
    pq.write_table(table, part / "train-00000-of-00001.parquet", row_group_size=half)
    (np.arange(n) % 251).astype(np.uint8).tofile(part / "tokens" / "train.bin")
    np.save(part / "tokens" / "train.idx.npy", np.arange(n))
    out, cfg = mix_corpus([(tmp_path / "deep", "data", n - 8)], tmp_path / "mix", seed=3)
    path = out / cfg / "train-00000-of-00001.parquet"
    assert pq.read_schema(path).equals(table.schema)
    order = pq.read_table(path, columns=["i"]).column("i").to_numpy()
    assert sorted(order) == list(range(n - 8)) and (order != np.arange(n - 8)).any()
    assert (np.fromfile(out / cfg / "tokens" / "train.bin", dtype=np.uint8) == order % 251).all()


def test_two_workers_asking_at_once_build_an_artifact_once(tmp_path, monkeypatch):
    """Two threads ask the cache for the same corpus, then the same run, at the same moment:
    one makes each artifact while the other waits on its lock and then reuses it, so nothing
    is built twice or two at a time."""
    from tinytrace.experiments import cache as C

    made, running, peak, guard = [], [0], [0], threading.Lock()

    def slow(kind, finish):
        def make(*args, **kw):
            with guard:
                made.append(kind)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.5)
            finish(*args)
            with guard:
                running[0] -= 1
        return make

    def corpus_done(cfg, folder, *rest):
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "build.json").write_text("{}")

    monkeypatch.setattr(C.tdata, "build", slow("corpus", corpus_done))
    monkeypatch.setattr(C, "train_run", slow("run", lambda tc, mc, d, c, out: out.mkdir()))
    cache, s, got = C.Cache(tmp_path, progress=False), get_scale("smoke"), []

    def worker():
        corpus = cache.corpus(s.generator("id"), 100, test_size=8)
        got.append((corpus, cache.run(s, corpus, s.model_config())))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hangs"
    assert made == ["corpus", "run"] and peak[0] == 1
    assert len(got) == 2 and got[0] == got[1]


def test_paper_numbers_as_data():
    assert paper.reported("base", "longer").value == 0.4365
    assert paper.reported("pe_ablation", "rpe_id").value == 0.8262
    t = paper.compare("base", {"id": 0.5}, scale="smoke")
    assert list(t["key"]) == ["id", "longer", "deeper", "deeper_clipping"]  # setup rows left out
    assert list(t["kind"]) == ["exact_match"] * 3 + ["threshold"]
    assert t.loc[t["key"] == "id", "this run"].item() == 0.5 and t["this run"].isna().sum() == 3
    assert (t["scale"] == "smoke").all()
    with pytest.raises(KeyError):
        paper.reported("base", "nope")


def test_trained_models_are_evaluated_on_the_gpu_when_there_is_one(smoke_cache, monkeypatch):
    """Checkpoints load on the CPU; experiments must move them to the evaluation device."""
    import torch

    from tinytrace.experiments import runners as X

    run = X.base_run_dir("smoke", smoke_cache)
    assert next(X._load(run).parameters()).device.type == "cpu"
    monkeypatch.setattr(X, "_device", lambda: torch.device("meta"))  # stands in for "cuda"
    assert next(X._load(run).parameters()).device.type == "meta"


def test_gpu_scale_trains_with_the_gpu_muon_state_recipe():
    """The gpu scale's recipe is the named `gpu-muon-state` preset (the `bench learn` recipe of
    the same name adds nothing to it; `gpu-muon` is the same with the plain loss), the paper
    scale the paper's."""
    from dataclasses import replace

    from tinytrace.experiments.learn import get_recipe
    from tinytrace.train import TRAIN_PRESETS

    gpu = get_scale("gpu")
    assert gpu.train == TRAIN_PRESETS["gpu-muon-state"] and gpu.train.optimizer == "muon"
    assert gpu.train.state_loss_weight == 3 and get_recipe("gpu-muon-state").apply(gpu).train == gpu.train
    plain = get_recipe("gpu-muon").apply(gpu).train
    assert replace(plain, name="gpu-muon") == TRAIN_PRESETS["gpu-muon"]
    assert get_scale("paper").train.state_loss_weight == 1
    paper = get_scale("paper").train
    assert (paper.lr_peak, paper.phase1_frac, paper.epochs) == (1e-3, 0.5, 4)


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])  # SIGINT, SIGTERM
def test_cli_experiment_interrupt_says_what_is_kept_and_the_same_command_finishes(
        signum, code, tmp_path, signal_when):
    """A signal once the base run's training has started: one line on stderr (what the cache
    kept, the same command to continue), exit 130 / 143, no traceback; rerunning that command
    resumes from the cache and writes the results."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    args = ["experiment", "base", "--scale", "smoke", "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    cmd = [sys.executable, "-m", "tinytrace", *args]
    rc, _, err = signal_when(cmd, lambda: any('"start"' in log.read_text() for log in
                                              (tmp_path / "cache").glob("run-*/log.jsonl")),
                             signum, env)
    assert rc == code, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in lines[0]
    assert f"kept in {tmp_path / 'cache'}" in lines[0]
    assert lines[0].endswith("to continue, run: " + shlex.join(["tinytrace", *args]))
    assert not (tmp_path / "out" / "results.csv").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "results.csv").exists()
    assert list((tmp_path / "cache").glob("run-*/done.json"))


def test_pe_ablation_reference_and_corpus_fraction():
    """APE is the reference of the PE ablation at every scale (G.2); with ``pe_corpus`` < 1
    every variant, the scale's own encoding included, is trained on that part of the base
    corpus, never taken from the fully trained base model."""
    from tinytrace.experiments.runners import _pe_config, _pe_run
    from tinytrace.model import count_params

    cpu, paper_scale = get_scale("cpu"), get_scale("paper")
    assert cpu.model_config().pe == "rpb" and cpu.pe_corpus == 1
    part = dataclasses.replace(cpu, pe_corpus=0.25)
    ref = _pe_config(cpu, "ape")
    assert ref.pe == "ape" and ref.n_embd == cpu.model_config().n_embd
    for pe in ("rpe", "rpb"):
        assert abs(count_params(_pe_config(cpu, pe)) / count_params(ref) - 1) < 0.06
    assert _pe_config(paper_scale, "ape") == paper_scale.model_config()

    calls = []

    class Cache:
        def run(self, scale, corpus, cfg, tag=""):
            calls.append((corpus, cfg.pe, tag))
            return tag

    class Ctx:
        scale, cache = part, Cache()

        def base_corpus(self, fraction=1.0):
            return fraction

        def base_run(self):
            raise AssertionError("the PE runs of a pe_corpus < 1 scale must not reuse the base run")

    assert [_pe_run(Ctx(), pe) for pe in cpu.pe_variants] == ["pe-ape", "pe-rpe", "pe-rpb"]
    assert calls == [(0.25, pe, f"pe-{pe}") for pe in cpu.pe_variants]
    # on the whole corpus the scale's own encoding (RPB, within the parameter match) is the base run
    calls.clear()
    Ctx.scale = cpu
    Ctx.base_run = lambda self: "base"
    assert [_pe_run(Ctx(), pe) for pe in cpu.pe_variants] == ["pe-ape", "pe-rpe", "base"]
    assert calls == [(1.0, "ape", "pe-ape"), (1.0, "rpe", "pe-rpe")]
    Ctx.scale = paper_scale
    Ctx.base_run = lambda self: "base"
    assert _pe_run(Ctx(), "ape") == "base"


def test_mix_key_does_not_depend_on_where_the_cache_is(tmp_path):
    """A moved cache keeps its mixed corpora (and the curriculum runs keyed by them)."""
    from tinytrace.experiments.runners import mix_key

    parts = lambda root: [(root / "corpus-a", "curriculum", 10), (root / "corpus-b", "depth-6", 2)]  # noqa: E731
    assert mix_key(parts(tmp_path / "one")) == mix_key(parts(tmp_path / "elsewhere" / "two"))
    assert mix_key(parts(tmp_path)) != mix_key(parts(tmp_path)[:1])
