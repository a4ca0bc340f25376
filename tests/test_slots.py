"""GPU slots that add up, checked end to end on the CPU at smoke scale: a first slot trains the
base run and stops before the unit that does not fit; its files are imported (done record,
records, weights); the next slot, from a fresh clone of what was committed and on a fresh cache,
restores the weights and runs the unit that needs them without training again; a unit cut short
leaves no done record."""
import dataclasses
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tinytrace.experiments import get_scale, slots
from tinytrace.experiments.slots import Unit
from tinytrace.report import paper

ROOT = Path(__file__).resolve().parents[1]

# What tinytrace installs that the GPU machine's image lacks (its package list in the device
# tool's KINDS.md, read 2026-11-17; papermill, ipykernel, nbformat and nbclient travel there as
# wheels, `.whl`). A slot's unit that imported one of these would fail there and waste the slot.
GPU_IMAGE_LACKS = ("datasets", "submitit", "jupyter_book", "jupyterlab", "multiprocess", "dill")


def _gpu_image_python(tmp_path) -> str:
    """A python command for the units that cannot import what the GPU image lacks (a
    ``sitecustomize`` on ``PYTHONPATH`` refuses those imports in it and in what it starts, the
    notebook kernels included)."""
    folder = tmp_path / "gpu-image"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        f"LACKS = {GPU_IMAGE_LACKS!r}\n"
        "class Lacks:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in LACKS:\n"
        "            raise ImportError(f'{name} is not on the GPU image')\n"
        "sys.meta_path.insert(0, Lacks())\n")
    return f"env PYTHONPATH={folder}:{ROOT} {sys.executable}"


def _plan():
    units = {u.name: u for u in slots.plan("smoke", device="cpu", eval_limit=8, profile_steps=8)}
    return [units["base"], units["bench-eval"]]


def test_the_plan_refuses_a_scale_whose_coverage_reference_is_not_the_base_run():
    """Section 04's unit carries the base run's weights as the exclusion runs' reference; a
    scale that trains the exclusion runs for other epochs needs a reference run no unit makes."""
    s = dataclasses.replace(get_scale("gpu"), coverage_epochs=2)
    with pytest.raises(ValueError, match="reference"):
        slots.plan(s)


def test_the_plan_lists_every_run_and_section_with_costs_and_needs():
    units = slots.plan("gpu")
    names = [u.name for u in units]
    assert names[:4] == ["base", "bench-train", "bench-eval", "learn-99"]  # base before benchmarks
    assert {f"pair_coverage-{i}" for i in range(12)} <= set(names)  # both scopes x 6 exclusions
    assert [n for n in names if n.startswith("section-")] == [f"section-0{i}" for i in range(2, 7)]
    by = {u.name: u for u in units}
    assert by["bench-eval"].weights == ("base",) and by["sft_lora-1"].weights == ("base",)
    assert by["sft_lora-1"].needs == ("base", "sft_lora-0")
    assert "--evaluate-trained" in by["pair_coverage-3"].command  # evaluated where it trains
    # 04 evaluates the base model on the excluded-pairs sets (its reference): it carries it
    assert by["section-04"].weights == ("base",) and by["section-02"].weights == ()
    assert "base" in by["section-04"].needs
    # a section trains nothing: a run its unit left out of the cache fails it at once
    assert all("--no-train" in by[f"section-0{i}"].command for i in range(2, 7))
    assert set(by["section-03"].needs) == {f"id_robustness-{i}" for i in range(4)}
    assert all(u.cost_s > 0 for u in units) and by["base"].returns > 0 and by["bench-eval"].returns == 0
    # the fine-tuning's `base` entry and the PE ablation's APE run are the base run: nothing new
    assert by["sft_lora-0"].returns == by["pe_ablation-0"].returns == 0 < by["pe_ablation-1"].returns


def test_every_gpu_unit_fits_one_slot():
    """A unit longer than one device call leaves (UNIT_MAX_S) would be skipped by every slot.
    The largest robustness run trains the whole corpus twice and evaluates 12 sets (the base
    test and 5 edits, each epoch): it fits only because the correctly traced subsets are read
    off the full sets' evaluations (22 evaluations would not)."""
    units = slots.plan("gpu")
    assert [u.name for u in units if u.cost_s > slots.UNIT_MAX_S] == []
    rob = next(u for u in units if u.name == "id_robustness-0")
    assert rob.cost_s + 10 * slots.EVAL_SET_S > slots.UNIT_MAX_S
    assert slots.slots_needed(units, {})[1] == []
    learn = next(u for u in units if u.name == "learn-99")
    assert f"epochs={slots.LEARN_EPOCHS}" in learn.command
    rows = slots.status_table([Unit("long", "true", slots.UNIT_MAX_S + 1)], {})
    assert rows[0]["state"].startswith("longer than a slot")
    # the throughput levers: one bench train each, each appending its line under its own limit
    train = next(u for u in units if u.name == "bench-train").command
    assert train.count("-m tinytrace bench train") == len(slots.TRAIN_LEVERS)
    assert "--compile-mode max-autotune-no-cudagraphs" in train and "--preset gpu-muon-state" in train
    assert train.count(">> {out}/bench_train.jsonl") == len(slots.TRAIN_LEVERS)
    # the second unit, after the base run: CUDA graphs and the compiled optimizer steps
    more = next(u for u in units if u.name == "bench-train-2")
    assert more.command.count(">> {out}/bench_train.jsonl") == len(slots.TRAIN_LEVERS_2)
    assert "--compile-mode reduce-overhead --warmup 3" in more.command
    assert "--preset paper --steps 20 --batch-size 512 --micro-batch-size 512 --compile " \
           "--compile-mode default --compile-optimizer" in more.command
    assert "--preset gpu-muon-state --steps 80 --batch-size 128 --micro-batch-size 128 " \
           "--compile --compile-mode default --compile-optimizer" in more.command
    assert "--compile-mode default --model-arg head_pad_multiple=0 --device" in more.command


def test_choose_fits_the_budget_the_needs_and_the_committed_weights(tmp_path):
    a, b, c = (Unit("a", "true", 100), Unit("b", "true", 50, ("a",)), Unit("c", "true", 30))
    assert [u.name for u in slots.choose([a, b, c], {}, 140)] == ["a", "c"]  # b does not fit
    assert [u.name for u in slots.choose([a, b, c], {}, 200)] == ["a", "b", "c"]
    done = {"a": {"runs": ["run-x"], "run_bytes": {"run-x": 40 * 2**20}},
            "e": {"runs": ["run-y"], "run_bytes": {"run-y": 40 * 2**20}}}
    loads = Unit("d", "true", 10, ("a", "e"), weights=("a", "e"))
    (tmp_path / "a" / "run-x").mkdir(parents=True)  # run-y's folder is not committed
    missing = slots.missing_weights([b, loads], done, tmp_path)
    assert missing == {"run-y"}
    assert [u.name for u in slots.choose([b, loads], done, 100)] == ["b", "d"]
    assert [u.name for u in slots.choose([b, loads], done, 100, missing=missing)] == ["b"]
    state = {r["unit"]: r["state"] for r in slots.status_table([b, loads], done, missing=missing)}
    assert state == {"b": "ready", "d": "waits for the weights of run-y, missing from the slot state"}
    light = Unit("l", "true", 10, ("a", "e"))  # needs their records only, not their weights
    assert [u.name for u in slots.choose([light], done, 100, missing=missing)] == ["l"]


def test_packed_weights_come_back_exactly_and_two_paper_runs_fit_one_return():
    """A call returns 64 MiB in all: two paper-model runs fit it packed (2 x 40 MB in plain
    bf16 would not), and the gpu plan never asks one slot to return more than fits."""
    import torch

    from tinytrace.model import GPT, count_params, get_model_config

    torch.manual_seed(0)
    weights = {k: v.to(torch.bfloat16) for k, v in GPT(get_model_config("tiny")).state_dict().items()}
    packed = slots.pack_weights(weights)
    back = slots.unpack_weights(packed)
    assert back.keys() == weights.keys() and all(torch.equal(back[k], weights[k]) for k in weights)
    bf16 = sum(v.numel() * 2 for v in weights.values())
    assert len(packed) <= slots.PACKED_ESTIMATE * bf16  # the plan's estimate holds at init
    paper = count_params(get_model_config("paper")) * 2
    room = slots.RETURN_LIMIT - slots.RETURN_RESERVE
    assert 2 * paper > room >= 2 * paper * slots.PACKED_ESTIMATE
    units, done = slots.plan("gpu"), {}
    while chosen := slots.choose(units, done, slots.UNIT_MAX_S):
        assert sum(u.returns for u in chosen) <= room
        assert sum(-(-u.returns // slots.PART_BYTES) for u in chosen) <= slots.MAX_WEIGHT_FILES
        done.update({u.name: {} for u in chosen})
    pair = [u for u in units if u.name in ("pair_coverage-0", "pair_coverage-1")]
    assert slots.choose(pair, {}, slots.UNIT_MAX_S) == pair


def _trains(run: str) -> str:
    """A unit command that "trains" ``run``: writes its weights into the cache, as training does."""
    return ("{python} -c \"import pathlib, torch; from safetensors.torch import save_file; "
            f"d = pathlib.Path('{{cache}}', '{run}'); d.mkdir(); "
            "save_file({'w': torch.randn(64, 64)}, d / 'model.safetensors')\"")


def test_weights_over_the_return_stay_behind_unless_a_later_unit_needs_them(tmp_path):
    """A slot whose trained weights would not fit what a call returns: a run no later unit loads
    is done without them (its evaluations are cached), the base run is not done, and a unit
    that needs a unit failed in this slot is not started."""
    other, base = Unit("other", _trains("run-o"), 1), Unit("base", _trains("run-b"), 1)
    uses = Unit("uses", "true", 1, ("base",), weights=("base",))
    rep = slots.run_slot([other, base, uses], {}, 600, tmp_path / "out", tmp_path / "cache",
                         python=sys.executable, device="cpu", return_limit=1)
    assert [r["unit"] for r in rep.done] == ["other"]
    assert "weights_left_out" in rep.done[0] and rep.done[0]["run_parts"] == {}
    assert [r["unit"] for r in rep.failed] == ["base"] and "a later unit needs" in rep.failed[0]["why"]
    assert rep.skipped == ["uses"] and not list((tmp_path / "out").glob("*.part*"))
    assert slots.import_slot(tmp_path / "out", tmp_path / "slots", tmp_path / "keep") == ["other"]


def test_a_part_that_did_not_come_back_leaves_a_needed_unit_undone(tmp_path):
    """The call leaves out files over its limits: import then sees the missing part."""
    other, base = Unit("other", _trains("run-o"), 1), Unit("base", _trains("run-b"), 1)
    later = Unit("later", "true", 10_000, ("base",), weights=("base",))  # never fits: not run
    rep = slots.run_slot([base, other, later], {}, 600, tmp_path / "out", tmp_path / "cache",
                         python=sys.executable, device="cpu")
    assert [(r["unit"], r["weights_needed"]) for r in rep.done] == [("base", True), ("other", False)]
    for rec in rep.done:
        (tmp_path / "out" / next(iter(rec["run_parts"][rec["runs"][0]]))).unlink()
    said = []
    assert slots.import_slot(tmp_path / "out", tmp_path / "slots", tmp_path / "keep",
                             report=said.append) == ["other"]
    assert "not done: base (the weights of run-b did not all come back)" in said
    rec = slots.done_units(tmp_path / "slots")["other"]
    assert rec["run_bytes"] == {} and rec["weights_left_out"]
    # no later unit loads run-o: its files stay on this machine, not in the committed folder
    assert (tmp_path / "keep" / "run-o").is_dir() and not (tmp_path / "slots" / "other" / "run-o").exists()


def test_what_a_call_carries_fits_its_64_mib():
    """The tree, the wheels and the committed slot state share what a call carries: the tree
    outside the slot state must stay within its share, and the slot state, with the base run
    (packed, estimated), within the rest."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    state = str(slots.DONE_DIR) + "/"
    assert sum((ROOT / f).stat().st_size for f in tracked
               if (ROOT / f).is_file() and not f.startswith(state)) <= slots.TREE_ESTIMATE
    # the slot state now, and the weights of runs later units load that are still to come
    units, done = slots.plan("gpu"), slots.done_units(ROOT / slots.DONE_DIR)
    loaded = {n for u in units for n in u.weights}
    to_come = sum(u.returns for u in units if u.name in loaded and u.name not in done)
    assert slots.state_bytes(ROOT / slots.DONE_DIR) + to_come <= slots.CARRY_LIMIT
    assert to_come or done  # the base run's weights, until a slot has done it
    assert slots.CARRY_LIMIT + slots.TREE_ESTIMATE + slots.WHEELS_ESTIMATE == 64 * 2**20
    # and git commits every file of the layout `import_slot` writes
    layout = [f"{state}base/{slots.RECORDS_FILE}", f"{state}base/run-x/run.json",
              f"{state}base/run-x/run-x.{slots.WEIGHTS_FILE}.part0", f"{state}base.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *layout], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 1 and ignored.stdout == ""  # 1: none of them is ignored


def test_only_evaluations_and_run_metadata_travel_as_records(tmp_path):
    """results.tgz and every later carry hold the cache's small records, never its data: the
    fine-tuning data (``sft-data-*``) alone would be ~30 MB at gpu scale."""
    cache, to = tmp_path / "cache", tmp_path / "to"
    for f in ("eval-1.json", "run-a-e1.rows.json", "run-a/run.json", "run-a/done.json",
              "run-a/model.safetensors", "run-a/state/optim.pt", "run-a/epoch-1/model.safetensors",
              "sft-b/log.jsonl", "sft-b/done.json", "sft-data-c/train.parquet",
              "corpus-d/build.json", "mix-e/x.arrow", "run-a.lock",
              "run-f/log.jsonl"):  # run-f did not finish: nothing of it travels
        (cache / f).parent.mkdir(parents=True, exist_ok=True)
        (cache / f).write_text("x")
    slots._copy_records(cache, 0, to)
    got = sorted(str(f.relative_to(to)) for f in to.rglob("*") if f.is_file())
    assert got == ["eval-1.json", "run-a-e1.rows.json", "run-a/done.json", "run-a/run.json",
                   "sft-b/done.json", "sft-b/log.jsonl"]


def test_weights_missing_from_the_committed_state_make_their_units_wait(tmp_path):
    """A done unit whose committed weights are gone (a checkout without them): the units that
    load them wait, with the reason in the log; the others run. A unit whose weights a later
    unit loads must train a run."""
    done = {"base": {"runs": ["run-b"], "run_bytes": {"run-b": 100}}}
    uses, other = Unit("uses", "true", 20, ("base",), weights=("base",)), Unit("other", "true", 1)
    assert slots.weight_sources([uses, other], done, tmp_path / "slots") == {
        "run-b": tmp_path / "slots" / "base" / "run-b"}
    said = []
    rep = slots.run_slot([uses, other], done, 600, tmp_path / "out", tmp_path / "cache",
                         tmp_path / "slots", device="cpu", report=said.append)
    assert [r["unit"] for r in rep.done] == ["other"] and "uses" in rep.skipped
    assert any(x.startswith("missing: the weights of run-b") for x in said)
    base = Unit("base", "true", 1)  # finds its run in the cache: trains none, returns none
    later = Unit("later", "true", 10_000, ("base",), weights=("base",))
    rep = slots.run_slot([base, later], {}, 600, tmp_path / "out2", tmp_path / "cache2",
                         device="cpu")
    assert [r["unit"] for r in rep.failed] == ["base"] and "trained no run" in rep.failed[0]["why"]


def test_two_slots_resume_from_committed_weights_on_a_fresh_clone(tmp_path):
    units, done_dir, keep = _plan(), tmp_path / "repo" / "slots", tmp_path / "keep"
    python = _gpu_image_python(tmp_path)  # what the GPU image lacks, the units do without
    # slot 1: room for the base run only (bench-eval's estimate does not fit what is left)
    rep = slots.run_slot(units, {}, units[0].cost_s + 30, tmp_path / "out1", tmp_path / "cache1",
                         done_dir, python=python, device="cpu")
    assert [r["unit"] for r in rep.done] == ["base"] and rep.skipped == ["bench-eval"]
    run = rep.done[0]["runs"][0]
    parts = sorted((tmp_path / "out1").glob(f"{run}.{slots.WEIGHTS_FILE}.part*"))
    assert parts and (tmp_path / "out1" / "results.tgz").exists()
    assert slots.import_slot(tmp_path / "out1", done_dir, keep) == ["base"]
    done = slots.done_units(done_dir)
    assert done["base"]["runs"] == [run] and done["base"]["run_bytes"][run] > 0
    # bench-eval loads the base run: its weights and records are committed with its record
    committed = done_dir / "base"
    assert (committed / run / "run.json").exists() and list((committed / run).glob("*.part0"))
    assert (committed / slots.RECORDS_FILE).is_file() and not keep.exists()
    packed = (committed / slots.RECORDS_FILE).read_bytes()
    assert packed[4:8] == bytes(4)  # no time in its gzip header
    assert slots.import_slot(tmp_path / "out1", done_dir, keep) == ["base"]  # again: same bytes
    assert (committed / slots.RECORDS_FILE).read_bytes() == packed
    # slot 2 from a fresh clone of the committed state, on a fresh machine and cache: base is
    # not trained again
    shutil.copytree(done_dir, tmp_path / "clone" / "slots")
    shutil.rmtree(tmp_path / "repo")
    done_dir = tmp_path / "clone" / "slots"
    rep = slots.run_slot(units, slots.done_units(done_dir), 300, tmp_path / "out2",
                         tmp_path / "cache2", done_dir, python=python, device="cpu")
    assert [r["unit"] for r in rep.done] == ["bench-eval"] and rep.done[0]["runs"] == []
    assert sorted(p.name for p in (tmp_path / "cache2").glob("run-*") if p.is_dir()) == [run]
    assert list((tmp_path / "cache2").glob("eval-*.json"))  # base's evaluations, restored
    assert not list((tmp_path / "out2").glob("*.part*"))  # no new weights
    slots.import_slot(tmp_path / "out2", done_dir, keep, results_dir=tmp_path / "results")
    lines = (done_dir / "bench-eval" / "bench_eval.jsonl").read_text().splitlines()
    bench = [json.loads(x) for x in lines]
    assert bench[-1]["traces"] == 8 and bench[-1]["model"].endswith(run)
    assert bench[0]["profile"]["steps"] == 8 and "profile" not in bench[-1]  # the first lever only
    assert not list((tmp_path / "results").glob("*"))  # 8 traces: not the 1,024-trace benchmark
    assert set(slots.done_units(done_dir)) == {"base", "bench-eval"}
    assert slots.choose(units, slots.done_units(done_dir), 10_000) == []


def _running(cmdline: str) -> bool:
    return any(cmdline.encode() in p.read_bytes().replace(b"\0", b" ")
               for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists())


def test_a_unit_cut_short_is_not_done(tmp_path):
    slow = Unit("slow", "sleep 37.25 && true", 1)  # the shell forks: its child must go too
    fails = Unit("fails", "exit 3", 1)
    rep = slots.run_slot([fails, slow], {}, 23, tmp_path / "out", tmp_path / "cache",
                         margin_s=20, device="cpu")
    assert {r["unit"]: r["why"] for r in rep.failed} == {"fails": "exit 3", "slow": "exit timeout"}
    assert not _running("sleep 37.25")
    for _ in range(2):  # imported twice: each try is recorded once
        assert slots.import_slot(tmp_path / "out", tmp_path / "slots", tmp_path / "keep") == []
    assert slots.done_units(tmp_path / "slots") == {}
    tried = slots.attempts(tmp_path / "slots")  # what the plan's estimates learn from
    assert {n: [(t["rc"], t["why"]) for t in ts] for n, ts in tried.items()} == {
        "fails": [(3, "exit 3")], "slow": [("timeout", "exit timeout")]}
    assert 2 < tried["slow"][0]["seconds"] < 5 and tried["slow"][0]["estimated_s"] == 1


def test_estimates_learn_from_what_slots_measured():
    """After a slot, pending runs and notebooks are scaled by what their kind measured (not
    below the floor); the bounded units (benchmarks, learn-99) stay as planned; a unit stopped
    at its limit is next estimated above what it had, and a crash teaches nothing."""
    units = [Unit("base", "true", 200), Unit("x-0", "true", 100), Unit("x-1", "true", 400),
             Unit("bench-eval", "true", 80), Unit("learn-99", "true", 400),
             Unit("section-02", "true", 60)]

    def costs(done, tried=None):
        got, factors = slots.calibrate(units, done, tried)
        return {u.name: u.cost_s for u in got}, factors

    assert costs({}) == ({u.name: u.cost_s for u in units}, {})
    done = {"base": {"seconds": 300.0, "rc": 0}, "bench-eval": {"seconds": 20.0, "rc": 0}}
    assert costs(done) == ({"base": 200, "x-0": 150, "x-1": 600, "bench-eval": 80,
                            "learn-99": 400, "section-02": 60}, {"training": 1.5})
    assert costs({"base": {"seconds": 20.0}})[0]["x-0"] == 75  # shrinks to the floor at most
    stopped = {"rc": "timeout", "seconds": 460.0, "date": "2026-12-06", "why": "exit timeout"}
    crash = {"rc": 1, "seconds": 3.0, "date": "2026-12-06", "why": "exit 1"}
    got, factors = costs({"base": {"seconds": 200.0}}, {"x-1": [stopped], "x-0": [crash]})
    assert factors == {"training": pytest.approx(660 / 600)}  # the stopped try: a lower bound
    assert got["x-0"] == 110 and got["x-1"] == 506  # 460 x 1.1 > 400 x 1.1
    calibrated = slots.calibrate(units, {"base": {"seconds": 200.0}}, {"x-1": [stopped]})[0]
    assert slots.slots_needed(calibrated, {"base": {}})[1] == ["x-1"]  # now longer than a slot
    rows = {r["unit"]: r["state"] for r in slots.status_table(
        calibrated, {"base": {"date": "d", "seconds": 200.0}}, tried={"x-1": [stopped]})}
    assert rows["x-1"] == ("longer than a slot takes (495 s); tried 1x, last 2026-12-06: "
                           "stopped at its limit after 460 s")
    assert "x 1.10" in slots.calibration_text(factors)


def test_a_slot_cut_short_returns_the_units_done_before(tmp_path):
    """The device call is killed at its limit: the units finished before come back whole."""
    out = tmp_path / "out"
    code = ("import sys; from tinytrace.experiments import slots; from tinytrace.experiments.slots "
            "import Unit; slots.run_slot([Unit('a', 'echo a > {out}/a.txt', 1), Unit('killed', "
            f"'kill -9 $PPID', 1)], {{}}, 600, {str(out)!r}, {str(tmp_path / 'cache')!r}, "
            "device='cpu')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert slots.import_slot(out, tmp_path / "slots", tmp_path / "keep") == ["a"]
    assert (tmp_path / "slots" / "a" / "a.txt").read_text() == "a\n"


def test_slot_cli_status_and_gpu_slot_script_on_the_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinytrace", "slot", "status", "--done-dir",
                        str(tmp_path), "--json"], capture_output=True, text=True, cwd=ROOT)
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and rows[0]["unit"] == "base" and rows[0]["state"] == "ready"
    env = {"OUT": str(tmp_path / "o"), "CACHE": str(tmp_path / "c"), "SCALE": "smoke",
           "NO_WHEELS": "1", "PY": sys.executable, "BENCH_DEVICE": "cpu", "EVAL_LIMIT": "8",
           "DEADLINE": "60", "DONE_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", "benchmarks/gpu_slot.sh"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # no unit fits the ~20 s left after the margins: nothing runs, nothing is recorded as done
    assert "slot: 0 done, 0 not done" in r.stdout and (tmp_path / "o" / "results.tgz").exists()
    log = (tmp_path / "o" / "log.txt").read_text()
    assert log.count("bench-train") >= 1 and " more slots of 495 s" in log  # the status's summary
    assert "committed slot state: 0.0 MiB of the 38 MiB" in log


def test_benchmark_units_become_performance_results(tmp_path):
    rec = {"unit": "bench-eval", "device": "NVIDIA H200", "date": "2026-12-05", "command": "c",
           "git_commit": "abc1234"}
    # bench-eval: the fastest decoding lever on 1,024 traces is the result, every lever named
    evals = [{"traces": 1024, "batch_size": 256, "modes": ["static", "static-full"],
              "static_seconds": 5.5, "static-full_seconds": 7.0},
             {"traces": 1024, "batch_size": 1024, "modes": ["static"], "static_seconds": 4.5}]
    (tmp_path / "bench_eval.jsonl").write_text("\n".join(json.dumps(e) for e in evals) + "\n")
    perf = slots.perf_result(rec, tmp_path)
    assert perf["metrics"] == {"eval_1024_seconds": 4.5} and perf["git_commit"] == "abc1234"
    assert "static-full batch 256: 7.00 s" in perf["name"] and len(perf["runs"]) == 2
    # bench-eval-2: the one-off preparation (captures, compiles) is reported beside the time
    evals = [{"traces": 1024, "batch_size": 256, "modes": ["static", "static-compiled"],
              "static_seconds": 5.5, "static-compiled_seconds": 3.0,
              "static_prepare_seconds": 0.4, "static-compiled_prepare_seconds": 61.0}]
    (tmp_path / "bench_eval.jsonl").write_text(json.dumps(evals[0]) + "\n")
    perf = slots.perf_result(dict(rec, unit="bench-eval-2"), tmp_path)
    assert perf["metrics"] == {"eval_1024_seconds": 3.0, "eval_1024_prepare_seconds": 61.0}
    assert "static-compiled batch 256: 3.00 s (+61.0 s prepare)" in perf["name"]
    assert "(slot unit bench-eval-2)" in perf["name"]
    (tmp_path / "bench_learn.json").write_text(json.dumps(
        {"to_99": {"seconds": 420.0}, "train_seconds": 500.0, "data_seconds": 9.5,
         "curve": [{"exact_match": 0.99}]}))
    perf = slots.perf_result(dict(rec, unit="learn-99"), tmp_path)
    assert perf["metrics"]["time_to_99_seconds"] == 429.5 and perf["em_curve"]  # data included
    # bench-train: the fastest lever of the paper's optimizer is the result, every lever named
    levers = [dict(preset="paper", micro_batch_size=512, compile_mode="default",
                   tokens_per_s=1.6e6, mfu=0.29),
              dict(preset="paper", micro_batch_size=512, compile_mode="max-autotune",
                   tokens_per_s=1.9e6, mfu=0.34),
              dict(preset="gpu-muon-state", micro_batch_size=128, compile_mode="default",
                   tokens_per_s=2.5e6, mfu=0.45)]
    (tmp_path / "bench_train.jsonl").write_text("\n".join(json.dumps(x) for x in levers) + "\n")
    perf = slots.perf_result(dict(rec, unit="bench-train"), tmp_path)
    assert perf["metrics"] == {"tokens_per_s": 1_900_000, "mfu": 0.34} and len(perf["runs"]) == 3
    assert "paper mb 512 max-autotune: 1.90M" in perf["name"] and "gpu-muon-state mb 128" in perf["name"]
    more = [dict(levers[0], compile_optimizer=True, tokens_per_s=1.7e6),
            dict(levers[0], model_overrides={"head_pad_multiple": 0}, tokens_per_s=1.2e6)]
    (tmp_path / "bench_train.jsonl").write_text("\n".join(json.dumps(x) for x in more) + "\n")
    perf = slots.perf_result(dict(rec, unit="bench-train-2"), tmp_path)
    assert "(slot unit bench-train-2)" in perf["name"]
    assert perf["metrics"]["tokens_per_s"] == 1_700_000
    assert "paper mb 512 default + compiled optimizer: 1.70M" in perf["name"]
    assert "paper mb 512 default head_pad_multiple=0: 1.20M" in perf["name"]
    assert slots.perf_result(dict(rec, unit="base"), tmp_path) is None


def test_a_section_runs_from_committed_records_without_weights(tmp_path):
    """Each training unit caches its run's evaluations (through --evaluate-trained; the
    robustness runs while training): a slot on a fresh cache runs the section's notebook with
    only those records committed, no weights, training nothing."""
    section = "02"  # one training unit (the base run) and its notebook
    units = {u.name: u for u in slots.plan("smoke", device="cpu")}
    plan = [units[n] for n in units[f"section-{section}"].needs] + [units[f"section-{section}"]]
    done_dir, keep = tmp_path / "slots", tmp_path / "keep"
    budget = sum(u.cost_s for u in plan[:-1]) + 30
    python = _gpu_image_python(tmp_path)  # the notebook's kernel too does without them
    rep = slots.run_slot(plan, {}, budget, tmp_path / "out1", tmp_path / "cache1", done_dir,
                         python=python, device="cpu", max_weight_files=3 * len(plan))
    assert [r["unit"] for r in rep.done] == [u.name for u in plan[:-1]], rep.failed
    slots.import_slot(tmp_path / "out1", done_dir, keep)
    done = slots.done_units(done_dir)
    with tarfile.open(done_dir / "base" / slots.RECORDS_FILE) as tar:
        assert any(n.startswith("eval-") and n.endswith(".json") for n in tar.getnames())
    assert not list(done_dir.rglob("*.part*"))  # no unit loads weights: none are committed
    rep = slots.run_slot(plan, done, 600, tmp_path / "out2", tmp_path / "cache2", done_dir,
                         python=python, device="cpu")
    assert [r["unit"] for r in rep.done] == [f"section-{section}"], rep.failed
    assert not list((tmp_path / "cache2").glob("run-*/model.safetensors"))  # nothing trained
    slots.import_slot(tmp_path / "out2", done_dir, keep)
    assert list((done_dir / f"section-{section}").glob(f"{section}_*.ipynb"))


def test_evaluate_trained_stops_at_the_first_run_not_trained(tmp_path):
    from tinytrace.experiments import evaluate_trained, run_training

    run_training("pair_coverage", 0, "smoke", tmp_path, progress=False)
    said = evaluate_trained("pair_coverage", "smoke", tmp_path, progress=False)
    assert said.startswith("evaluated the trained runs of pair_coverage before run-")
    assert len(list(tmp_path.glob("eval-*.json"))) == 2  # allowed and excluded pairs of run 0
    assert not list(tmp_path.glob("run-*/model.safetensors"))[1:]  # nothing else trained


def test_evaluate_trained_leaves_the_coverage_reference_to_the_section(tmp_path):
    """A slot's coverage units evaluate without the base run's weights: with every exclusion
    run trained, the evaluate-only pass finishes without asking for the base run (the section,
    which carries its weights, traces it on the excluded-pairs sets)."""
    from tinytrace.experiments import evaluate_trained, run_training, training_runs

    n = len(training_runs("pair_coverage", "smoke"))
    for i in range(n):
        run_training("pair_coverage", i, "smoke", tmp_path, progress=False)
    runs = sorted(p.name for p in tmp_path.glob("run-*") if p.is_dir())
    said = evaluate_trained("pair_coverage", "smoke", tmp_path, progress=False)
    assert said == "evaluated every run of pair_coverage"
    assert sorted(p.name for p in tmp_path.glob("run-*") if p.is_dir()) == runs  # no base run
    assert len(list(tmp_path.glob("eval-*.json"))) == 2 * n  # allowed and excluded, no reference


def test_the_gpu_scale_page_follows_the_slot_records(tmp_path, monkeypatch):
    """book/gpu_scale.md: the plan with the done units, and the findings of a section notebook a
    slot ran at gpu scale, read from its outputs under benchmarks/slots/section-<NN>/; units
    no slot can take are named."""
    from tinytrace.report import pages

    page = pages.gpu_scale_page(tmp_path)
    n = len(slots.plan("gpu"))
    assert f"0 of {n} units done" in page and "No section notebook has run at `gpu` scale yet" in page
    n_slots, stuck = slots.slots_needed(slots.plan("gpu"), {})
    assert f"{n_slots} slots" in page and not stuck and "no slot can take" not in page
    with monkeypatch.context() as m:
        m.setattr(slots, "EVAL_SET_S", 20)  # slower evaluations: the largest robustness run is too long
        stuck = slots.slots_needed(slots.plan("gpu"), {})[1]
        assert f"no slot can take {len(stuck)} units (`id_robustness-0`" in pages.gpu_scale_page(tmp_path)
    doc = json.loads((ROOT / "book" / "sections" / "02_model_data_training.json").read_text())
    doc.update(scale="gpu", hardware="GPU: NVIDIA H200")
    (tmp_path / "section-02").mkdir()
    (tmp_path / "section-02" / "02_model_data_training.json").write_text(json.dumps(doc))
    (tmp_path / "section-02" / "02_model_data_training.ipynb").write_text("{}")
    for unit in ("base", "section-02"):
        (tmp_path / f"{unit}.json").write_text(json.dumps({"unit": unit, "date": "2026-12-05",
                                                           "seconds": 100.0, "runs": []}))
    page = pages.gpu_scale_page(tmp_path)
    assert f"2 of {n} units done" in page and "| `section-02` | 60 | done 2026-12-05 (100 s)" in page
    # measured 100 s each: the notebooks scaled up (60 s planned), the runs down to the floor
    assert "measured: sections x 1.67, training runs x 0.75." in page
    assert "| `section-03` | 200 | waits for" in page  # 120 s planned
    assert "Of the paper's" in page and "Scale `gpu` on GPU: NVIDIA H200" in page
    assert "section-02/02_model_data_training.ipynb" in page
    assert "Waits for the GPU slots (unit `section-03`)" in page
    assert "unit `section-01`" not in page and "--scale gpu --only 01` runs it on a CPU" in page
    # 05 shows the base model's findings too: counted once, as on the results page
    ood = json.loads((ROOT / "book" / "sections" / "05_ood.json").read_text())
    ood.update(scale="gpu", hardware="GPU: NVIDIA H200")
    (tmp_path / "section-05").mkdir()
    (tmp_path / "section-05" / "05_ood.json").write_text(json.dumps(ood))
    (tmp_path / "section-05" / "05_ood.ipynb").write_text("{}")
    n = sum(1 for r in paper.REPORTED if r.experiment in ("base", "depth_curriculum")
            and r.kind != "setup")
    assert f"Of the paper's {n} findings measured at `gpu` scale" in pages.gpu_scale_page(tmp_path)


def test_slots_needed_counts_the_slots_left():
    a, b, c = Unit("a", "true", 300), Unit("b", "true", 300, ("a",)), Unit("c", "true", 100)
    assert slots.slots_needed([a, b, c], {}, 450) == (2, [])  # a + c, then b
    assert slots.slots_needed([a, b, c], {"a": {}, "b": {}, "c": {}}, 450) == (0, [])
    after = Unit("after", "true", 10, ("big",))
    assert slots.slots_needed([Unit("big", "true", 500), after, c], {}, 450) == (1, ["big", "after"])
