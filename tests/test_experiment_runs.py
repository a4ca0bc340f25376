"""An experiment's training runs as separate jobs: the listing (``--list-runs``), one run alone
(``--run INDEX``) into a cache the experiment then reuses, and submission with submitit's
local executor."""
import json
import os
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tinytrace.cli import build_parser, main
from tinytrace.experiments import (
    EXPERIMENTS,
    SCALES,
    get_scale,
    run_experiment,
    run_training,
    submit_runs,
    training_runs,
)
from tinytrace.experiments import runners
from tinytrace.experiments.cache import Cache, _Context, _key


def _done_runs(cache: Path) -> dict[str, str]:
    """Finished training runs of a cache: folder name -> its done.json."""
    return {p.parent.name: p.read_text() for p in cache.glob("run-*/done.json")}


def test_paper_pair_coverage_lists_one_command_per_scope_and_exclusion(tmp_path, capsys):
    cache = tmp_path / "shared cache"
    assert main(["experiment", "pair_coverage", "--scale", "paper", "--list-runs",
                 "--cache-dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    s = get_scale("paper")
    assert len(s.scopes) == 2
    assert len(lines) == len(s.scopes) * len(s.exclusion_pcts)
    for i, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[:4] == ["accelerate", "launch", "-m", "tinytrace"]
        args = build_parser(argv[4:]).parse_args(argv[4:])  # a valid command of this CLI
        assert (args.name, args.scale, args.run, args.cache_dir) == ("pair_coverage", "paper", i,
                                                                     str(cache))
    labels = [r.label for r in training_runs("pair_coverage", "paper")]
    assert labels == [f"coverage-{scope}-{pct}" for scope in s.scopes for pct in s.exclusion_pcts]
    assert not cache.exists()  # listing builds nothing


@pytest.mark.parametrize("scale", list(SCALES))
def test_every_experiment_lists_its_runs(scale):
    for name in EXPERIMENTS:
        runs = training_runs(name, scale)
        assert runs and not runs[0].after_first
        assert len({r.label for r in runs}) == len(runs)
    s = get_scale(scale)
    assert len(training_runs("sft_lora", scale)) == 1 + len(s.sft_sizes) * len(s.sft_epochs)
    assert all(r.after_first for r in training_runs("sft_lora", scale)[1:])  # need the base model


def test_run_index_out_of_range_is_one_line_error(tmp_path, capsys):
    n = len(training_runs("pair_coverage", "smoke"))
    assert main(["experiment", "pair_coverage", "--run", str(n),
                 "--cache-dir", str(tmp_path)]) == 2
    assert f"has {n} training runs" in capsys.readouterr().err
    assert main(["experiment", "pair_coverage"]) == 2  # neither --out, --list-runs nor --run


def test_one_run_alone_is_reused_by_the_experiment(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["experiment", "pair_coverage", "--scale", "smoke", "--run", "1",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    assert "coverage-" in capsys.readouterr().out
    alone = _done_runs(cache)
    assert len(alone) == 1
    # --no-train: run 0 is not trained, so the experiment fails in one line and trains nothing
    out = ["experiment", "pair_coverage", "--scale", "smoke", "--cache-dir", str(cache), "--quiet",
           "--out", str(tmp_path / "res"), "--no-train"]
    assert main(out) == 2
    assert "is not trained" in capsys.readouterr().err and _done_runs(cache) == alone
    assert main(out[:-3] + ["--run", "0", "--no-train"]) == 2  # a contradiction
    assert "goes with --out" in capsys.readouterr().err and _done_runs(cache) == alone
    # every run of --list-runs trained: the error names the base model, which `base` trains
    for i in range(len(training_runs("pair_coverage", "smoke"))):
        run_training("pair_coverage", i, "smoke", cache, progress=False)
    assert main(out) == 2
    err = capsys.readouterr().err
    assert "the base model of scale smoke" in err and "is not trained" in err
    assert err.strip().endswith("train it first: accelerate launch -m tinytrace experiment base "
                                f"--scale smoke --run 0 --cache-dir {shlex.quote(str(cache))} "
                                "--seed 0")
    run_experiment("pair_coverage", "smoke", cache_dir=cache, progress=False)
    after = _done_runs(cache)
    every = dict(after)
    base = _Context(get_scale("smoke"), cache, 0, progress=False).base_run().name
    assert base in after  # the reference rows' model, a prerequisite, not one of the runs
    del after[base]
    assert len(after) == len(training_runs("pair_coverage", "smoke"))
    assert alone.items() <= after.items()  # the same folder, not trained again
    assert main(out) == 0 and _done_runs(cache) == every  # all there: nothing trained again
    rows = pd.read_csv(tmp_path / "res" / "results.csv")  # the reference rows too
    assert (rows["test_set"] == "excluded-base").sum() == (rows["test_set"] == "excluded").sum() > 0
    # a run done without its weights whose evaluation is missing: trained again only if allowed
    (cache / base / "model.safetensors").unlink()
    for f in cache.glob("eval-*.json"):
        if json.loads(f.read_text())["run"] == base:
            f.unlink()
    assert main(out) == 2
    assert "drop --no-train to train it again" in capsys.readouterr().err
    with pytest.raises(ValueError, match="True or False"):
        run_experiment("pair_coverage", "smoke", cache_dir=cache, train="False")  # -p train=False


@pytest.mark.parametrize("scale, base_of", [("smoke", "smoke"), ("cpu-long", "cpu"),
                                           ("paper", "paper")])
def test_list_runs_names_the_runs_of_other_experiments(tmp_path, capsys, scale, base_of):
    """stdout: one command per run of the experiment; stderr: the command of each run of
    another experiment or scale that its evaluation needs (the pair coverage's reference)."""
    cache = tmp_path / "cache"
    assert main(["experiment", "pair_coverage", "--scale", scale, "--list-runs",
                 "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) == len(training_runs("pair_coverage", scale))
    assert all(" pair_coverage " in line for line in lines)
    need = (f"the base model of scale {base_of}, not a run listed here; first: accelerate launch "
            f"-m tinytrace experiment base --scale {base_of} --run 0 --cache-dir {cache} --seed 0")
    assert need in printed.err
    assert main(["experiment", "base", "--scale", scale, "--list-runs",
                 "--cache-dir", str(cache)]) == 0
    assert "also needs" not in capsys.readouterr().err
    assert not cache.exists()  # listing builds nothing


@pytest.mark.parametrize("scale", list(SCALES))
def test_a_prerequisite_is_the_run_the_experiment_reads(tmp_path, monkeypatch, scale):
    """The run a prerequisite's command trains is the reference the pair coverage evaluates
    (corpora and runs stubbed: their folders, keyed as the cache keys them, nothing built)."""
    def corpus(self, gen, n, test_size, validation_size=0, seed=0, context=512):
        key = _key([gen.to_dict(), n, test_size, validation_size, seed, context])
        return self.root / f"corpus-{key}", "data"

    monkeypatch.setattr(Cache, "corpus", corpus)
    monkeypatch.setattr(Cache, "run", lambda self, scale, corpus, model_cfg, callbacks=(),
                        train=None, tag="": self.run_dir(scale, corpus, model_cfg, train, tag)[0])
    [need] = runners.prerequisites("pair_coverage", scale)
    assert runners.prerequisites("base", scale) == []
    ref = runners._coverage_reference(_Context(get_scale(scale), tmp_path, 0, progress=False))
    trains = training_runs(need.experiment, need.scale)[need.index]
    assert trains.train(_Context(get_scale(need.scale), tmp_path, 0, progress=False)) == ref


@pytest.mark.slow
def test_submitit_local_executor_trains_every_run(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cache = tmp_path / "cache"
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=15)
    # depth_curriculum: its later runs wait for the first (they mix the corpora it builds)
    name = "depth_curriculum"
    runs = training_runs(name, "smoke")
    assert len(runs) >= 2 and runs[1].after_first
    # the documented call: the default launcher, `accelerate`, with no environment activated
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                if not (Path(p) / "accelerate").exists()))
    assert shutil.which("accelerate") is None
    jobs = submit_runs(executor, name, "smoke", cache_dir=cache, device="cpu")
    assert len(jobs) == len(runs)
    for job in jobs:
        job.result()  # raises if the job's command failed
    done = _done_runs(cache)
    expected = {run_training(name, i, "smoke", cache, progress=False).name for i in range(len(runs))}
    assert set(done) == expected  # what the jobs trained is what the experiment reads
    assert _done_runs(cache) == done  # and nothing was trained again
    for folder in done:
        log = [json.loads(x) for x in (cache / folder / "log.jsonl").read_text().splitlines()]
        assert [r["event"] for r in log].count("start") == 1


def test_token_counts_read_the_shipped_sets_from_any_folder(tmp_path, monkeypatch):
    """`slot status` and the plan's costs read the shipped sets' build records: from the
    repository, not the working directory."""
    from tinytrace.experiments import training_tokens

    here = training_tokens("gpu")
    monkeypatch.chdir(tmp_path)
    assert training_tokens("gpu") == here and here["base"] == pytest.approx(600_000 * 306.71)
