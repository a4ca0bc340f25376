"""tinytrace.experiments.learn: the learning-efficiency benchmark (bench learn)."""
import json
from dataclasses import replace

import pytest
import torch

from tinytrace.cli import main
from tinytrace.evaluate import SCORES
from tinytrace.experiments import learn
from tinytrace.model import load_checkpoint
from tinytrace.train import TrainConfig, train


def test_first_reaching_is_the_first_point_at_or_above():
    """The time-to-X% of a curve (at smoke every EM is 0, so the trajectory test only ever sees
    None): the first point at or above, not a later or the best one; equality counts."""
    curve = [{"exact_match": em, "tokens": 100 * i, "train_seconds": 10.0 * i, "step": i}
             for i, em in enumerate((0.2, 0.95, 0.9, 0.99, 1.0), 1)]
    assert learn.first_reaching(curve, 0.9) == {"tokens": 200, "seconds": 20.0, "step": 2}
    assert learn.first_reaching(curve, 0.99) == {"tokens": 400, "seconds": 40.0, "step": 4}
    assert learn.first_reaching(curve, 0.2) == {"tokens": 100, "seconds": 10.0, "step": 1}
    assert learn.first_reaching(curve[:3], 0.99) is None


def test_curve_is_one_trajectory(tmp_path):
    """Evaluating at 3 points resumes one run: the last point's weights are those of the same
    recipe trained in one go, and the curve's steps and tokens add up."""
    lines = []
    res = learn.bench_learn("smoke", points=3, cache_dir=tmp_path / "cache", out_dir=tmp_path / "run",
                            progress=False, report=lines.append)
    curve = res["curve"]
    assert len(curve) == len(lines) == 3 and res["finished"]
    assert [p["step"] for p in curve] == sorted({round(res["total_steps"] * k / 3) for k in (1, 2, 3)})
    assert all(p["tokens"] == p["step"] * res["tokens_per_step"] for p in curve)
    assert curve[-1]["step"] == res["total_steps"]
    assert [p["train_seconds"] for p in curve] == sorted(p["train_seconds"] for p in curve)
    assert res["eval_n"] == 8
    for p in curve:  # EM over 8 traces, every metric a fraction
        assert (p["exact_match"] * 8).is_integer() and all(0 <= p[k] <= 1 for k in SCORES)
    for t in (50, 90, 95, 99):  # the first point at or above the threshold, else None
        hit = [p for p in curve if p["exact_match"] >= t / 100]
        assert res[f"to_{t}"] == (None if not hit else {"tokens": hit[0]["tokens"],
                                                        "seconds": hit[0]["train_seconds"],
                                                        "step": hit[0]["step"]})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["recipe"]["name"] == "scale" and run["train"]["name"] == "scale"

    tc = TrainConfig(**res["train"])
    data = next(p for p in (tmp_path / "cache").glob("corpus-*") if p.is_dir())  # not its .lock
    train(replace(tc, max_steps=None), load_checkpoint(tmp_path / "run").config, data, "data",
          tmp_path / "once", progress=False)
    a, b = load_checkpoint(tmp_path / "run").state_dict(), load_checkpoint(tmp_path / "once").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_recipe_overrides_and_cli(tmp_path, capsys):
    """Ad-hoc overrides reach the run (and its record); the CLI prints one JSON line last."""
    code = main(["bench", "learn", "--scale", "smoke", "--points", "1", "--json", "--no-progress",
                 "--cache-dir", str(tmp_path), "--train-arg", "optimizer=muon",
                 "--model-arg", "n_layer=1", "--corpus-snippets", "200"])
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["train"]["optimizer"] == "muon" and res["model"]["n_layer"] == 1
    assert res["recipe"]["corpus_snippets"] == 200 and len(res["curve"]) == 1
    with pytest.raises(ValueError, match="unknown recipe"):
        learn.get_recipe("nope")
    assert main(["bench", "learn", "--scale", "smoke", "--recipe", "nope"]) == 2


def test_gpu_recipe_runs_on_cpu(tmp_path):
    """The gpu scale's task, corpus, recipe (Muon, the state-weighted loss) and evaluation for two steps on the CPU, one
    trace evaluated; the model shrunk to 2 x 64 (this CPU emulates the bf16 that Muon's
    Newton-Schulz iterations run in: ~130 s per step of the paper model)."""
    res = learn.bench_learn("gpu", "gpu-muon-state", points=4, max_steps=2, eval_limit=1,
                            model_overrides=dict(n_layer=2, n_head=4, n_embd=64),
                            cache_dir=tmp_path, progress=False, report=lambda _: None,
                            train_overrides=dict(batch_size=2, micro_batch_size=None,
                                                 block_size=64, compile=False),
                            corpus_snippets=64)
    assert [p["step"] for p in res["curve"]] == [2] and not res["finished"]
    assert res["model"]["n_layer"] == 2 and res["model"]["block_size"] == 512
    assert res["tokens_per_step"] == 2 * 64 and res["eval_n"] == 1
    assert res["train"]["optimizer"] == "muon" and res["train"]["muon_lr"] == 6e-3
    assert res["train"]["state_loss_weight"] == 3
    assert res["eval_n"] == 1 and res["recipe"]["name"] == "gpu-muon-state"


@pytest.mark.parametrize("name", list(learn.RECIPES))
def test_every_recipe_applies(name):
    """Each named recipe gives valid train and model configs on the scale it is for, with its
    own fields in them (the scale's task and test sets are untouched)."""
    from tinytrace.experiments.scales import get_scale

    scale = get_scale("gpu" if name.startswith("gpu") else "cpu")
    rec = learn.get_recipe(name)
    s = rec.apply(scale)
    assert all(getattr(s.train, k) == v for k, v in rec.train.items())
    assert all(getattr(s.model_config(), k) == v for k, v in rec.model.items())
    assert s.corpus_snippets == (rec.corpus_snippets or scale.corpus_snippets)
    assert s.task == scale.task and s.test_size == scale.test_size


def test_cli_interrupt_says_what_is_kept_and_to_measure_again(tmp_path, signal_when):
    """SIGTERM once training has started: one line on stderr (what was kept, and that a
    benchmark measures a fresh run: rerun with a new --out), exit 143, no traceback; that
    rerun measures the whole curve."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = lambda out: [sys.executable, "-m", "tinytrace", "bench", "learn", "--scale",  # noqa: E731
                       "smoke", "--points", "2", "--cache-dir", str(tmp_path / "cache"),
                       "--out", str(out), "--no-progress", "--json"]
    log = tmp_path / "a" / "log.jsonl"
    rc, out, err = signal_when(cmd(tmp_path / "a"), lambda: log.exists() and '"start"' in log.read_text(),
                               signal.SIGTERM, env)
    assert rc == 143, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and out == "", err[-3000:]
    assert lines[0].startswith("tinytrace bench: stopped by SIGTERM")
    assert lines[0].endswith("to measure it, rerun with a new --out")
    r = subprocess.run(cmd(tmp_path / "b"), capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1])["finished"]
