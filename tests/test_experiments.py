import json

import pandas as pd
import pytest

from tinytrace.report import paper
from tinytrace.experiments import (
    EXPERIMENTS, SCALES, curriculum_counts, get_scale, mix_corpus, run_experiment, scale_table,
)

COLUMNS = {"experiment", "model", "test_set", "condition", "exact_match", "n", "step_em_tf",
           "final_state_match", "state_token_acc", "scale", "hardware"}
EXPECTED_ROWS = {
    "base": 3,
    "id_robustness": 2 * 2 * 11,  # corpora x epochs x (base + 5 edits x {full, correct})
    "pair_coverage": 2 * 2 * 2,  # scopes x exclusion % x {allowed, excluded}
    "depth_curriculum": 2 * 5,  # p values x test sets
    "sft_lora": 3 + 3,  # pre-trained + one fine-tuned model, 3 test sets each
    "pe_ablation": 3 * 3,
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_at_smoke_scale(name, smoke_cache, tmp_path):
    df = run_experiment(name, "smoke", out=tmp_path, cache_dir=smoke_cache, progress=False)
    assert COLUMNS <= set(df.columns)
    assert len(df) == EXPECTED_ROWS[name]
    assert (df["experiment"] == name).all() and (df["scale"] == "smoke").all()
    em = df["exact_match"].dropna()
    assert ((em >= 0) & (em <= 1)).all()
    saved = pd.read_csv(tmp_path / "results.csv")
    assert len(saved) == len(df)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == name and config["scale"]["name"] == "smoke"
    if name == "id_robustness":
        assert set(df["epoch"]) == {1, 2} and set(df["subset"]) == {"full", "correct"}
    if name == "pe_ablation":
        params = df.groupby("model")["params"].first()
        assert (abs(params / params["ape"] - 1) < 0.06).all()


def test_cached_rerun_is_identical(smoke_cache, tmp_path):
    a = run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False)
    b = run_experiment("base", "smoke", cache_dir=smoke_cache, progress=False)
    assert a.drop(columns="hardware").equals(b.drop(columns="hardware"))


def test_scales_table():
    t = scale_table()
    assert list(t["scale"]) == ["smoke", "cpu", "gpu", "paper"]
    p = get_scale("paper")
    assert p.corpus_snippets == 3_000_000 and p.model == "paper" and p.train["epochs"] == 4
    assert p.robustness_corpora == (1.0, 0.5, 0.25, 0.125) and p.robustness_epochs == 8
    assert p.exclusion_pcts == (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 96, 97, 98, 99, 100)
    assert p.curriculum_ps == (0, 1, 5, 10, 20, 40, 60, 80, 100)
    with pytest.raises(ValueError, match="unknown scale"):
        get_scale("huge")
    assert set(SCALES) == {"smoke", "cpu", "gpu", "paper"}


@pytest.mark.parametrize("p", [0, 1, 5, 10, 20, 40, 60, 80, 100])
def test_curriculum_mix_has_the_requested_fractions(p, tmp_path):
    counts = curriculum_counts(1000, p, ["inject-6", "inject-7"])
    assert sum(counts.values()) == 1000
    assert counts["inject-6"] + counts["inject-7"] == round(10 * p)
    assert abs(counts["inject-6"] - counts["inject-7"]) <= 1


def test_mix_corpus(tmp_path):
    from tinytrace.lang.config import get_preset
    from tinytrace.data import build, BuildConfig, token_stream

    a = build(BuildConfig(get_preset("base"), num_snippets=120, test_size=10, validation_size=10,
                          config_name="a"), tmp_path / "a", workers=1, progress=False)
    b = build(BuildConfig(get_preset("depth-6"), num_snippets=40, test_size=0, validation_size=0,
                          config_name="b"), tmp_path / "b", workers=1, progress=False)
    out, cfg = mix_corpus([(tmp_path / "a", "a", 90), (tmp_path / "b", "b", 10)], tmp_path / "mix")
    import pyarrow.parquet as pq

    train = pq.read_table(out / cfg / "train-00000-of-00001.parquet").to_pydict()
    assert len(train["code"]) == 100 and sum(d == 6 for d in train["max_depth"]) == 10
    assert pq.read_table(out / cfg / "test-00000-of-00001.parquet").num_rows == 10
    stream = token_stream(out, cfg, "train")
    assert len(stream) == sum(train["n_tokens"])


def test_paper_numbers_as_data():
    assert paper.reported("base", "longer").value == 0.4365
    assert paper.reported("pe_ablation", "rpe_id").value == 0.8262
    t = paper.compare("base", {"id": 0.5}, scale="smoke")
    assert set(t["what"]) >= {"base model, ID test"} and (t["scale"] == "smoke").all()
    with pytest.raises(KeyError):
        paper.reported("base", "nope")


def test_trained_models_are_evaluated_on_the_gpu_when_there_is_one(smoke_cache, monkeypatch):
    """Checkpoints load on the CPU; experiments must move them to the evaluation device."""
    import torch

    from tinytrace.experiments import core as X

    run = X.base_run_dir("smoke", smoke_cache)
    assert next(X._load(run).parameters()).device.type == "cpu"
    monkeypatch.setattr(X, "_device", lambda: torch.device("meta"))  # stands in for "cuda"
    assert next(X._load(run).parameters()).device.type == "meta"


def test_gpu_scale_trains_with_the_fast_recipe():
    """The gpu scale's recipe is the named `fast` preset (issue 6), the paper scale the paper's."""
    from tinytrace.experiments import get_scale
    from tinytrace.train import TRAIN_PRESETS, TrainConfig

    assert TrainConfig(**get_scale("gpu").train) == TRAIN_PRESETS["fast"]
    paper = TrainConfig(**get_scale("paper").train)
    assert (paper.lr_peak, paper.phase1_frac, paper.epochs) == (1e-3, 0.5, 4)
