"""GPU slots that add up: a plan of work units, run a few at a time, each slot resuming where the
last one stopped.

A GPU is lent now and then for a few minutes. :func:`plan` lists the work in order (benchmarks,
the learning curve to 99% ID EM, the base model, then every training run of every section and
the section notebooks), each unit a shell command with an estimated cost in seconds and the
units it needs. :func:`run_slot` (``tinytrace slot run``, called by ``benchmarks/gpu_slot.sh``)
restores the committed records and weights of finished units into the cache, runs the next
pending units that fit the time left, and leaves in ``out``: ``results.tgz`` (one record per
unit and each unit's outputs) and the weights of the runs it trained (bf16, in parts small
enough to come back). Back on the developer's machine, :func:`import_slot` (``tinytrace slot
import``) writes a done record per finished unit to ``benchmarks/slots/`` (what says a unit is
done) and beside it, in the unit's folder, what later slots need from it: its cache records
(packed, ``records.tgz``) and the weights of its runs where a later unit loads them (the base
run's). All of it is committed, so a fresh clone resumes where the last slot stopped, and a
device call takes it with the tree: nothing to stage. The weights no later unit needs are kept
on this machine only, under ``runs/gpu-slot-weights/`` (ignored by git).

A call carries at most 64 MiB (the tree, with this committed slot state) and returns at most
64 MiB: one paper-model run is 40 MB in bf16, about 28 MB packed (:func:`pack_weights`), so two
trained runs come back from one slot. Each training unit evaluates its own run into the cache
(``tinytrace experiment NAME --evaluate-trained``; the robustness runs evaluate while they
train), and every done unit's small cache records (run metadata, evaluations, the robustness
rows) travel with every slot: the section notebooks then read cached evaluations and need no
weights (models load lazily, only on a cache miss), except the base run's in section 04, which
traces it on the excluded-pairs sets as a reference.

A unit is done only when its command exited 0 inside its time and, if a later unit needs the
weights of the runs it trained (the base run), those weights came back: a unit cut short leaves
no record, so the next slot runs it again from the start (each call begins on a fresh cache;
only done units' records and the weights later units need travel, in the committed tree). The
weights no unit needs come back when they fit what a call returns; where they do not, the unit
is done without them (its evaluations are what the sections read) and its record says so.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shlex
import signal
import shutil
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tinytrace.lang.edits import EDIT_NAMES

from .records import record_files
from .runners import EXPERIMENTS, run_tokens, training_runs
from .scales import get_scale

DONE_DIR = Path("benchmarks/slots")
KEEP_DIR = Path("runs/gpu-slot-weights")  # the weights no later unit needs (not committed)
PART_BYTES = 15_000_000  # each weights part (a slot returns files of <= 16 MiB)
MAX_WEIGHT_FILES = 6  # of the 8 files a slot returns: the log and results.tgz come too
# A call returns at most 64 MiB in all; the log and results.tgz (records, executed notebooks:
# under 1 MB each so far) keep RETURN_RESERVE of it, the weights parts share the rest.
RETURN_LIMIT = 64 * 2**20
RETURN_RESERVE = 3 * 2**20
WEIGHTS_FILE = "bf16.safetensors.zlib"  # a run's packed weights: <run>.<WEIGHTS_FILE>.part<i>
# Packed bytes per bf16 byte that the plan assumes for a run's weights: 0.70-0.71 measured on
# bf16 tensors drawn from normal, Student-t (3) and uniform distributions, rounded up.
PACKED_ESTIMATE = 0.75
RECORDS = "cache-records"  # in a unit's results: the small cache files it wrote
RECORDS_FILE = "records.tgz"  # the same, packed, in its committed folder (JSON packs 3-5x)
# A device call carries at most 64 MiB: the working tree, the papermill wheels (`.whl`, for the
# section units) and the committed slot state (DONE_DIR: records and the weights later units
# load); the rest of the limit is the slot state's.
TREE_ESTIMATE = 10 * 2**20  # the files git tracks outside DONE_DIR (a test keeps them under it)
WHEELS_ESTIMATE = 16 * 2**20  # papermill, ipykernel and what they need that the GPU image lacks
CARRY_LIMIT = 64 * 2**20 - TREE_ESTIMATE - WHEELS_ESTIMATE
# The longest a unit may take: what a device call (at most 600 s) leaves after the machine's
# start, `gpu_slot.sh`'s 15 s and run_slot's 20 s margin, i.e. DEADLINE=530; a longer unit
# would never be chosen.
UNIT_MAX_S = 530 - 15 - 20
# The bench-train unit's levers, one `bench train` each on the scale's model (preset None: the
# scale's recipe): (preset, batch = micro-batch, torch.compile mode, more options, time limit
# in seconds). The first is the baseline an earlier slot measured, for a ratio within one run.
TRAIN_LEVERS = (("paper", 512, "default", "", 60),
                ("paper", 512, "max-autotune-no-cudagraphs", "", 120),
                (None, 128, "default", "", 60))
# The bench-train-2 unit's levers, after the base run: CUDA graphs (a third warmup step: the
# graphs are recorded on the second), the optimizer steps compiled, with the paper's AdamW
# and with the scale's recipe (Muon), and the paper model's head size 23 left unpadded (what
# padding it to 24 gains); each JSON line also times the optimizers alone.
TRAIN_LEVERS_2 = (("paper", 512, "reduce-overhead", "--warmup 3", 90),
                  ("paper", 512, "default", "--compile-optimizer", 75),
                  (None, 128, "default", "--compile-optimizer", 75),
                  ("paper", 512, "default", "--model-arg head_pad_multiple=0", 60))
# The bench-eval unit's decoding levers on the same 1,024 traces, one `bench eval` each:
# (modes, batch size, profile, time limit s); `static` vs `static-full` times the
# attention-width buckets in one run, then profiles the first tokens of the longest batch
# (where a step's time goes).
EVAL_LEVERS = (("static,static-full", 256, True, 60), ("static", 512, False, 60),
               ("static", 1024, False, 60))
# The bench-eval-2 unit's: the decode step compiled (one graph per attention width, compiled
# before the timed run) and the step casting its fp32 weights at every token (what the bf16
# copy of the weights saves) against the eager step in one run, then compiled at batch 1024
# with a profile of its steps.
EVAL_LEVERS_2 = (("static,static-compiled,static-autocast", 256, False, 180),
                 ("static-compiled", 1024, True, 120))
# learn-99's epochs of the scale's recipe: as many as fit one slot (UNIT_MAX_S)
LEARN_EPOCHS = 2
# Sections whose notebook needs every training run of these experiments (the rest evaluate only).
SECTION_EXPERIMENTS = {"02": ("base",), "03": ("id_robustness",), "04": ("base", "pair_coverage"),
                       "05": ("base", "depth_curriculum"), "06": ("sft_lora", "pe_ablation")}


@dataclass(frozen=True)
class Unit:
    """One piece of slot work: ``command`` runs in the repository root with ``{cache}`` (the run
    cache), ``{out}`` (this unit's output folder) and ``{python}`` filled in; ``needs``: units
    that must be done first (their cached records are restored before this one starts);
    ``weights``: those of them whose trained weights it needs too; ``cost_s``: the estimated
    seconds, setup included, on one H200; ``returns``: the estimated bytes of the packed
    weights it returns (the runs it trains)."""

    name: str
    command: str
    cost_s: int
    needs: tuple[str, ...] = ()
    description: str = ""
    weights: tuple[str, ...] = ()
    returns: int = 0


# Seconds to evaluate one test set of 1,024 traces on the H200 (7.2 s measured for the base
# set at batch 256, plus the teacher-forced pass), and how many a run's overhead already covers.
EVAL_SET_S, EVALS_IN_OVERHEAD = 8, 3


def _run_cost(tokens: float, tokens_per_s: float, overhead_s: int = 45, evals: int = 0) -> int:
    """Training seconds at the measured throughput, plus compile, data and checkpoint time, plus
    the evaluations beyond the few the overhead covers."""
    extra = max(0, evals - EVALS_IN_OVERHEAD) * EVAL_SET_S
    return int(round(tokens / tokens_per_s)) + overhead_s + extra


def plan(scale: str = "gpu", device: str = "cuda", tokens_per_s: float = 1.2e6,
         eval_limit: int = 1024, seed: int = 0, profile_steps: int = 256) -> list[Unit]:
    """Every unit of GPU work at ``scale``, in the order slots take them. ``tokens_per_s``: the
    training throughput the costs assume (the H200's 1.23M tokens/s with the gpu-muon recipe,
    rounded down); a run's cost is its own training tokens (:func:`run_tokens`) at that rate,
    plus compile, data, checkpoint and evaluation time.
    ``device``/``eval_limit``/``profile_steps``: where and on how many traces the benchmarks
    run, and how many tokens of decoding are profiled (a CPU check of the plan uses a few)."""
    from tinytrace.model import count_params

    s = get_scale(scale)
    if s.recipe(s.coverage_epochs) != s.train:
        # section 04 carries the base run's weights as the exclusion runs' reference
        raise ValueError(f"scale {s.name!r} trains its exclusion runs for other epochs than the "
                         "base run: their reference is then another scale's base run, which "
                         "no unit trains; the slot plan supports scales whose reference is "
                         "their own base run")
    tokens = run_tokens(s.name)
    run_bytes = int(count_params(s.model_config()) * 2 * PACKED_ESTIMATE)  # one run, packed
    units = []
    # A run needs a unit's weights only where it starts from the base run (SFT) or may be it (the
    # PE ablation's APE run); the corpora other runs share are rebuilt, seeded, where missing.
    for name in EXPERIMENTS:
        runs = training_runs(name, s, seed)
        for i, r in enumerate(runs):
            unit = "base" if name == "base" else f"{name}-{i}"
            weights = ("base",) if name == "sft_lora" else ()
            needs = weights + (("base",) if name == "pe_ablation" and i == 0 else ())
            needs += (f"{name}-{i - 1}",) if i > 0 else ()  # evaluated in the runner's order
            exp = f"{{python}} -m tinytrace experiment {name} --scale {s.name} --cache-dir {{cache}}"
            # train the run, then evaluate it into the cache (the robustness runs evaluate
            # while they train): later units read its evaluations without its weights
            cmd = f"{exp} --run {i} --seed {seed}"
            if name != "id_robustness":
                cmd += f" && {exp} --evaluate-trained --seed {seed}"
            # a robustness run evaluates while it trains: each epoch the base test and every
            # edit's full set (the correctly traced snippets are read off the full sets)
            evals = s.robustness_epochs * (1 + len(EDIT_NAMES)) if name == "id_robustness" else 0
            units.append(Unit(unit, cmd, _run_cost(tokens[name][i], tokens_per_s, 75, evals), needs,
                              f"{name}: {r.label}", weights=weights,
                              returns=run_bytes if tokens[name][i] else 0))
        if name == "base":  # the benchmarks after the base run: an overrun costs them, not it
            units.append(_bench_train_unit(
                "bench-train", s, device, TRAIN_LEVERS, 180,
                "training throughput levers of the scale's model (compile modes, the scale's "
                "recipe), a JSON line each"))
            units.append(_bench_eval_unit(
                "bench-eval", device, EVAL_LEVERS, eval_limit, profile_steps, 85,
                f"greedy decoding speed on {eval_limit:,} base traces: width buckets, "
                "batch sizes, a profile of the steps"))
            units.append(Unit(
                "learn-99", f"{{python}} -m tinytrace bench learn --scale {s.name} --recipe scale "
                f"--train-arg epochs={LEARN_EPOCHS} --points 6 --eval-limit 512 --minutes 6 "
                "--cache-dir {cache} --out {cache}/learn-99 --no-progress --json "
                "> {out}/bench_learn.json",
                _run_cost(LEARN_EPOCHS * tokens["base"][0], tokens_per_s, 120),
                description=f"time to 95/99% ID EM: the scale's base recipe for {LEARN_EPOCHS} "
                            "epochs, 6 evaluations of 512 traces"))
            units.append(_bench_train_unit(
                "bench-train-2", s, device, TRAIN_LEVERS_2, 270,
                "more training levers: CUDA graphs, compiled optimizer steps (AdamW, Muon), "
                "head size 23 unpadded"))
            units.append(_bench_eval_unit(
                "bench-eval-2", device, EVAL_LEVERS_2, eval_limit, profile_steps, 210,
                f"greedy decoding speed on {eval_limit:,} base traces: the decode step "
                "compiled, and with per-step weight casts"))
    for sec, exps in SECTION_EXPERIMENTS.items():
        needs = tuple(u.name for u in units if any(u.name == e or u.name.startswith(e + "-")
                                                   for e in exps))
        # every run's evaluations are cached by its own unit: a section needs no weights, but
        # 04 evaluates the base model on the excluded-pairs sets (its reference) and 06 carries
        # the base run, which the fine-tuning runs were made from, to be safe
        units.append(Unit(f"section-{sec}", f"{{python}} -m tinytrace notebooks run --scale "
                          f"{s.name} --only {sec} --out {{out}} --cache-dir {{cache}} --seed {seed} "
                          # the unit's records come back as the slot's; a run that its
                          # training unit left out of the cache fails the notebook at once
                          "--no-records --no-train",
                          _section_cost(sec), needs, f"section {sec}: notebook from cached runs",
                          weights=("base",) if sec in ("04", "06") else ()))
    return units


def _bench_eval_unit(name: str, device: str, levers, eval_limit: int, profile_steps: int,
                     cost_s: int, description: str) -> Unit:
    """A unit of ``bench eval`` levers on the base run, each appending its JSON line to
    ``bench_eval.jsonl`` under its own time limit (done if at least one did)."""
    return Unit(name, " ; ".join(
        f"timeout -k 5 {limit_s} {{python}} -m tinytrace bench eval --checkpoint {{run:base}} "
        f"--data data/tinytracing --config base --limit {eval_limit} --batch-size {b} "
        f"--modes {modes} " + (f"--profile-steps {profile_steps} " if prof else "")
        + f"--device {device} --json >> {{out}}/bench_eval.jsonl"
        for modes, b, prof, limit_s in levers) + " ; test -s {out}/bench_eval.jsonl", cost_s,
        ("base",), description, ("base",))


def _bench_train_unit(name: str, s, device: str, levers, cost_s: int, description: str) -> Unit:
    """A unit of ``bench train`` levers, each appending its JSON line to ``bench_train.jsonl``
    (done if at least one did)."""
    return Unit(name, " ; ".join(_bench_train_command(s.model, s.train.name, device, *lever)
                                 for lever in levers) + " ; test -s {out}/bench_train.jsonl",
                cost_s, description=description)


def _bench_train_command(model: str, recipe: str, device: str, preset: str | None, batch: int,
                         compile_mode: str, options: str, limit_s: int) -> str:
    """One ``bench train`` lever (20 steps of 512 windows' worth of tokens) appending its JSON
    line: a lever that fails or runs past ``limit_s`` adds none and costs the others nothing."""
    return (f"timeout -k 5 {limit_s} {{python}} -m tinytrace bench train --model {model} "
            f"--preset {preset or recipe} --steps {20 * 512 // batch} --batch-size {batch} "
            f"--micro-batch-size {batch} --compile --compile-mode {compile_mode} "
            + (f"{options} " if options else "")
            + f"--device {device} --json >> {{out}}/bench_train.jsonl")


def _section_cost(sec: str) -> int:
    """Corpora rebuilt (seeded), cached evaluations read, papermill start and plots."""
    return {"02": 60, "03": 120, "04": 180, "05": 120, "06": 90}.get(sec, 90)


# --- records ------------------------------------------------------------------------------------
ATTEMPTS = "attempts"  # under the done records: each unit a slot ran that did not finish
# Units bounded by their own time limits (each benchmark lever's `timeout`, learn-99's
# `--minutes`): their seconds say little about other units', and their estimates stay as planned.
BOUNDED = ("bench-", "learn-")
CALIBRATION_FLOOR = 0.75  # what slots measured shrinks an estimate by at most a quarter
TIMEOUT_MARGIN = 1.1  # a unit stopped at its limit after T s is next estimated at T x this


def done_units(done_dir=DONE_DIR) -> dict[str, dict]:
    """The committed done records, by unit name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(done_dir).glob("*.json"))}


def attempts(done_dir=DONE_DIR) -> dict[str, list[dict]]:
    """The committed records of units a slot ran that did not finish (``attempts/<unit>.json``,
    written by :func:`import_slot`), by unit name, oldest first."""
    return {p.stem: json.loads(p.read_text())
            for p in sorted((Path(done_dir) / ATTEMPTS).glob("*.json"))}


def unit_kind(u: Unit) -> str | None:
    """``"training"`` (a run of an experiment), ``"section"`` (a notebook), or None for the
    units bounded by their own time limits (:data:`BOUNDED`), whose estimates stay as planned."""
    if u.name.startswith(BOUNDED):
        return None
    return "section" if u.name.startswith("section-") else "training"


def calibrate(units: list[Unit], done: dict, tried: dict | None = None
              ) -> tuple[list[Unit], dict[str, float]]:
    """The pending ``units`` (as :func:`plan` estimates them) with their costs corrected by what
    slots measured, and the factor applied to each kind of unit (:func:`unit_kind`).

    The plan's estimates rest on one assumed throughput and fixed overheads. Once a slot has
    run units of a kind, every pending unit of that kind is scaled by the ratio of measured to
    estimated seconds over them (done units, and tries that exited 0 or were stopped at their
    limit, a lower bound), never below :data:`CALIBRATION_FLOOR`. A unit once stopped at its
    limit after T s is estimated at no less than T x :data:`TIMEOUT_MARGIN`: a slot will not
    choose it again with no more time, only to stop it again. Both sides of a device call (here
    ``slot status``, there ``slot run``) read the same committed records, so they choose alike."""
    tried = tried or {}
    by = {u.name: u for u in units}
    spent, planned = defaultdict(float), defaultdict(float)
    evidence = [(n, [d]) for n, d in done.items()]
    evidence += [(n, recs) for n, recs in tried.items() if n not in done]  # done: measured whole
    for name, recs in evidence:
        u = by.get(name)
        kind = unit_kind(u) if u else None
        if kind is None:  # not in this plan, or bounded by its own limits
            continue
        for r in recs:
            if r.get("rc", 0) in (0, "timeout") and r.get("seconds"):
                spent[kind] += r["seconds"]
                planned[kind] += u.cost_s
    factors = {k: max(CALIBRATION_FLOOR, spent[k] / planned[k]) for k in planned}
    out = []
    for u in units:
        cost = u.cost_s
        if u.name not in done:
            cost = math.ceil(round(cost * factors.get(unit_kind(u), 1.0), 6))
            stopped = [r["seconds"] for r in tried.get(u.name, []) if r.get("rc") == "timeout"]
            if stopped:
                cost = max(cost, math.ceil(round(max(stopped) * TIMEOUT_MARGIN, 6)))
        out.append(replace(u, cost_s=cost) if cost != u.cost_s else u)
    return out, factors


def calibrated_plan(scale: str = "gpu", done_dir=DONE_DIR, **plan_args
                    ) -> tuple[list[Unit], dict, dict, dict[str, float]]:
    """The plan at ``scale`` (:func:`plan`) calibrated by the committed records in ``done_dir``
    (:func:`calibrate`): units, done records, tries not done, factors."""
    done, tried = done_units(done_dir), attempts(done_dir)
    units, factors = calibrate(plan(scale, **plan_args), done, tried)
    return units, done, tried, factors


def calibration_text(factors: dict[str, float]) -> str:
    """The factors in words, for ``slot status`` and the gpu-scale page."""
    if not factors:
        return "no slot has measured a run or a section yet: the estimates are as planned"
    return "estimates scaled by what slots measured: " + ", ".join(
        f"{k} runs x {f:.2f}" if k == "training" else f"{k}s x {f:.2f}"
        for k, f in sorted(factors.items()))


def pending(units: list[Unit], done: dict) -> list[Unit]:
    return [u for u in units if u.name not in done]


def weight_runs(unit: Unit, done: dict) -> dict[str, int]:
    """The done runs whose weights ``unit`` loads, with their packed sizes."""
    return {r: b for n in unit.weights for r, b in done.get(n, {}).get("run_bytes", {}).items()}


def weight_sources(units: list[Unit], done: dict, done_dir=DONE_DIR) -> dict[str, Path]:
    """The committed folder of each done run whose weights ``units`` load: beside the done
    record of the unit that trained it (``<done_dir>/<unit>/<run>/``)."""
    return {r: Path(done_dir) / n / r for u in units for n in u.weights
            for r in done.get(n, {}).get("run_bytes", {})}


def missing_weights(units: list[Unit], done: dict, done_dir=DONE_DIR) -> set[str]:
    """The done runs that ``units`` load whose committed folder is not there (a checkout
    without them, or a plan that now loads a run no unit loaded when it was imported)."""
    return {r for r, src in weight_sources(units, done, done_dir).items() if not src.is_dir()}


def choose(units: list[Unit], done: dict, budget_s: float,
           max_weight_files: int = MAX_WEIGHT_FILES,
           return_limit: int = RETURN_LIMIT - RETURN_RESERVE,
           missing: set | frozenset = frozenset()) -> list[Unit]:
    """The pending units, in plan order, that fit ``budget_s`` together, whose needs are done
    (or chosen before them), that load none of the ``missing`` runs (:func:`missing_weights`)
    and whose returned weights (estimated) fit ``return_limit`` bytes in ``max_weight_files``
    parts. (What a call carries, the tree with the committed slot state, does not depend on
    the units chosen.)"""
    chosen, left, files, returned = [], budget_s, 0, 0
    ready = set(done)
    for u in pending(units, done):
        parts = -(-u.returns // PART_BYTES)
        if (u.cost_s > left or not set(u.needs) <= ready or set(weight_runs(u, done)) & missing
                or files + parts > max_weight_files or returned + u.returns > return_limit):
            continue
        chosen.append(u)
        ready.add(u.name)
        left -= u.cost_s
        files += parts
        returned += u.returns
    return chosen


def slots_needed(units: list[Unit], done: dict, budget_s: float = UNIT_MAX_S
                 ) -> tuple[int, list[str]]:
    """How many more slots of ``budget_s`` the pending units take, chosen as :func:`choose`
    does (every committed run present), and the pending units no slot can take (longer than a
    slot, or waiting for one that is)."""
    done, n = dict(done), 0
    while chosen := choose(units, done, budget_s):
        done.update({u.name: {} for u in chosen})
        n += 1
    return n, [u.name for u in pending(units, done)]


def status_table(units: list[Unit], done: dict, tried: dict | None = None,
                 missing: set | frozenset = frozenset()) -> list[dict]:
    """One row per unit: name, estimated cost, needs, done (date and measured seconds), or why
    no slot can take it yet (``missing``: :func:`missing_weights`), and how its last try ended
    where a slot ran it without finishing (``tried``: :func:`attempts`)."""
    rows = []
    for u in units:
        if u.name in done:
            state = f"done {done[u.name]['date']} ({done[u.name]['seconds']:.0f} s)"
        elif not set(u.needs) <= set(done):
            state = "waits for " + ", ".join(n for n in u.needs if n not in done)
        elif u.cost_s > UNIT_MAX_S:
            state = f"longer than a slot takes ({UNIT_MAX_S} s)"
        elif lost := sorted(set(weight_runs(u, done)) & missing):
            state = f"waits for the weights of {', '.join(lost)}, missing from the slot state"
        else:
            state = "ready"
        last = (tried or {}).get(u.name, [None])[-1]
        if last and u.name not in done:
            state += (f"; tried {len(tried[u.name])}x, last {last['date']}: "
                      + ("stopped at its limit" if last.get("rc") == "timeout" else last["why"])
                      + f" after {last['seconds']:.0f} s")
        rows.append({"unit": u.name, "cost_s": u.cost_s, "state": state,
                     "description": u.description})
    return rows


# --- weights ------------------------------------------------------------------------------------
def pack_weights(tensors: dict) -> bytes:
    """``tensors`` as bf16 safetensors, packed losslessly for the trip back: the even bytes of
    the file, then the odd ones, deflated. Apart, a bf16 value's sign-and-exponent bytes (few
    distinct values in trained weights) compress well; its mantissa bytes hardly."""
    import torch
    from safetensors.torch import save

    blob = save({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()})
    return zlib.compress(blob[0::2] + blob[1::2], 6)


def unpack_weights(data: bytes) -> dict:
    """The bf16 tensors :func:`pack_weights` packed."""
    from safetensors.torch import load

    planes = zlib.decompress(data)
    half = (len(planes) + 1) // 2
    blob = bytearray(len(planes))
    blob[0::2], blob[1::2] = planes[:half], planes[half:]
    return load(bytes(blob))


def export_weights(run_dir: Path, out: Path) -> list[Path]:
    """``run_dir``'s model packed (:func:`pack_weights`) in :data:`PART_BYTES` parts in ``out``."""
    from safetensors.torch import load_file

    blob = pack_weights(load_file(run_dir / "model.safetensors"))
    parts = []
    for i in range(0, len(blob), PART_BYTES):
        parts.append(out / f"{run_dir.name}.{WEIGHTS_FILE}.part{i // PART_BYTES}")
        parts[-1].write_bytes(blob[i:i + PART_BYTES])
    return parts


def restore_run(src: Path, cache: Path) -> Path:
    """A committed run (``src``: its run files and packed weights parts) as a finished run in ``cache``
    (fp32 weights, as training writes them), so the experiment reuses it."""
    import torch
    from safetensors.torch import save_file

    dst = Path(cache) / src.name
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and ".part" not in f.name:
            shutil.copy2(f, dst / f.name)
    parts = sorted(src.glob(f"*.{WEIGHTS_FILE}.part*"),
                   key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if parts:
        weights = unpack_weights(b"".join(p.read_bytes() for p in parts))
        save_file({k: v.to(torch.float32).contiguous() for k, v in weights.items()},
                  dst / "model.safetensors")
    return dst


def restore_records(names: list[str], done_dir, cache: Path) -> None:
    """The cache records of the done units ``names`` (runs' metadata, evaluations, committed
    packed in each unit's folder) into ``cache``, in that order (the plan's: a later unit's copy
    of a file wins), so a slot on a fresh cache reads them instead of redoing them."""
    for name in names:
        f = Path(done_dir) / name / RECORDS_FILE
        if f.is_file():
            with tarfile.open(f) as tar:
                tar.extractall(cache, filter="data")


def state_bytes(done_dir=DONE_DIR) -> int:
    """What the committed slot state (done records, outputs, records, weights) adds to the tree
    a device call carries: at most :data:`CARRY_LIMIT`."""
    return sum(f.stat().st_size for f in Path(done_dir).rglob("*") if f.is_file())


def _copy_records(cache: Path, t: float, to: Path) -> None:
    """The records of ``cache`` written at or after ``t`` (:func:`.records.record_files`:
    evaluations, the robustness runs' rows, the run folders' metadata; no weights, no corpora,
    which a later unit rebuilds, seeded) copied to ``to``."""
    for rel in record_files(cache, t):
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(cache) / rel, to / rel)


def _trained_since(cache: Path, t: float) -> list[str]:
    """Training runs (``run-*``) and fine-tuning runs (``sft-*``) of ``cache`` whose weights
    were written at or after ``t`` (wall-clock time)."""
    return sorted(p.parent.name for pat in ("run-*", "sft-*")
                  for p in Path(cache).glob(f"{pat}/model.safetensors") if p.stat().st_mtime >= t)


# --- one slot -----------------------------------------------------------------------------------
@dataclass
class SlotReport:
    device: str = ""
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_slot(units: list[Unit], done: dict, budget_s: float, out, cache, done_dir=DONE_DIR,
             python: str = "python3", margin_s: float = 20, report=print,
             max_weight_files: int = MAX_WEIGHT_FILES, device: str = "cuda",
             return_limit: int = RETURN_LIMIT - RETURN_RESERVE) -> SlotReport:
    """Restore the done units' records and the runs the chosen units need from their committed
    folders in ``done_dir``, run the units in order while time is left, then pack
    ``out/results.tgz`` (records and outputs) and the new runs' weights into ``out`` (at most
    ``max_weight_files`` parts of ``return_limit`` bytes in all)."""
    from tinytrace.provenance import device_name

    t0 = time.monotonic()
    out, cache = Path(out), Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="slot-"))
    missing = missing_weights(units, done, done_dir)
    for name in sorted(missing):
        report(f"missing: the weights of {name} (committed with its unit's done record in "
               f"{done_dir}); the units that load them wait")
    chosen = choose(units, done, budget_s - margin_s, max_weight_files, return_limit, missing)
    needed = {n for u in units for n in u.weights}  # units whose weights later units load
    rep = SlotReport(device=device_name(device),
                     skipped=[u.name for u in pending(units, done) if u not in chosen])
    restore_records([u.name for u in units if u.name in done], done_dir, cache)
    for name, src in sorted(weight_sources(chosen, done, done_dir).items()):
        restore_run(src, cache)
        report(f"restored {name}")
    run_of = {n: d["runs"][0] for n, d in done.items() if d.get("runs")}
    weight_files = weight_bytes = 0
    finished = set(done)
    for u in chosen:
        _pack_results(stage, rep, out)  # what is done so far comes back even if the call is cut
        left = budget_s - (time.monotonic() - t0) - margin_s
        if u.cost_s > left or not set(u.needs) <= finished:  # too long, or a need failed here
            rep.skipped.append(u.name)
            continue
        unit_out = stage / u.name
        unit_out.mkdir()
        cmd = u.command.replace("{python}", python).replace("{cache}", shlex.quote(str(cache)))
        cmd = cmd.replace("{out}", shlex.quote(str(unit_out)))
        for n, r in run_of.items():
            cmd = cmd.replace(f"{{run:{n}}}", shlex.quote(str(cache / r)))
        report(f"== {u.name} (estimated {u.cost_s} s, {left:.0f} s left): {cmd}")
        wall, t1 = time.time(), time.monotonic()
        rc = _run_unit(cmd, left)  # its limit: the time left, so it cannot eat the slot's end
        secs = round(time.monotonic() - t1, 1)
        new = _trained_since(cache, wall)
        record = {"unit": u.name, "command": u.command, "seconds": secs, "rc": rc,
                  "estimated_s": u.cost_s, "date": time.strftime("%Y-%m-%d"),
                  "device": rep.device, "runs": new, "weights_needed": u.name in needed}
        parts = {r: export_weights(cache / r, out) for r in new} if rc == 0 else {}
        files = sum(len(p) for p in parts.values())
        size = sum(f.stat().st_size for p in parts.values() for f in p)
        fits = weight_files + files <= max_weight_files and weight_bytes + size <= return_limit
        if not fits:  # no room left in what the call returns
            for f in (f for p in parts.values() for f in p):
                f.unlink()
        if rc != 0 or u.name in needed and not (new and fits):
            record["why"] = (f"exit {rc}" if rc != 0 else
                             "it trained no run (found one in the cache?), and a later unit "
                             "needs its weights" if not new else
                             f"its weights ({files} parts, {size / 2**20:.1f} MiB) would not fit "
                             "what a slot returns, and a later unit needs them")
            rep.failed.append(record)
            report(f"-- {u.name}: not done ({record['why']}) after {secs} s")
            continue
        _copy_records(cache, wall, unit_out / RECORDS)
        record["run_bytes"], record["run_parts"] = {}, {}
        if fits:
            weight_files, weight_bytes = weight_files + files, weight_bytes + size
            for r, ps in parts.items():
                record["run_bytes"][r] = sum(f.stat().st_size for f in ps)
                record["run_parts"][r] = {f.name: f.stat().st_size for f in ps}
        else:  # nothing later loads them: done without them, as the record says
            record["weights_left_out"] = (f"{files} parts, {size / 2**20:.1f} MiB: over what "
                                          "a slot returns")
            report(f"-- {u.name}: its weights stay behind ({record['weights_left_out']})")
        for r in new:
            shutil.copytree(cache / r, unit_out / r, ignore=shutil.ignore_patterns(
                "state*", "*.safetensors", "epoch-*", "*.lock"))
        (unit_out / "done.json").write_text(json.dumps(record, indent=1) + "\n")
        rep.done.append(record)
        finished.add(u.name)
        run_of.update({u.name: new[0]} if new else {})
        report(f"-- {u.name}: done in {secs} s" + (f", runs {', '.join(new)}" if new else ""))
    _pack_results(stage, rep, out)
    shutil.rmtree(stage, ignore_errors=True)
    sizes = [f.stat().st_size for f in out.iterdir() if f.is_file()]
    report(f"returns {len(sizes)} files, {sum(sizes) / 2**20:.1f} MiB (a call returns "
           f"{RETURN_LIMIT / 2**20:.0f} MiB; results.tgz "
           f"{(out / 'results.tgz').stat().st_size / 2**20:.2f} MiB of the "
           f"{RETURN_RESERVE / 2**20:.0f} MiB kept for it and the log)")
    return rep


def _run_unit(cmd: str, limit_s: float) -> int | str:
    """Run ``cmd`` in a shell of its own process group; past ``limit_s`` the whole group is
    stopped (SIGTERM, then SIGKILL), not only the shell, so no training is left holding the
    GPU. The exit code, or ``"timeout"``."""
    proc = subprocess.Popen(cmd, shell=True, start_new_session=True)
    try:
        return proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        return "timeout"
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass


def _pack_results(stage: Path, rep: SlotReport, out: Path) -> None:
    """``out/results.tgz``: the report and every unit's folder so far, replaced whole (a call
    cut short returns the last complete one)."""
    (stage / "slot.json").write_text(json.dumps(asdict(rep), indent=1) + "\n")
    tmp = out / ".results.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(stage, arcname="results")
    tmp.replace(out / "results.tgz")


def perf_result(rec: dict, unit_dir: Path) -> dict | None:
    """A benchmark unit's outputs as a ``benchmarks/results`` file (what the book's performance
    page reads), None for other units."""
    def lines(name):
        f = unit_dir / name
        return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []

    base = {"device": rec["device"], "date": rec["date"], "command": rec["command"],
            "git_commit": rec.get("git_commit", "?"), "notes": [f"slot unit `{rec['unit']}`"]}
    if rec["unit"].startswith("bench-train") and lines("bench_train.jsonl"):
        runs = lines("bench_train.jsonl")
        # the goal is the paper model's step with the paper's optimizer: its fastest lever
        paper = [t for t in runs if t.get("preset", "paper") == "paper"] or runs
        t = max(paper, key=lambda t: t["tokens_per_s"])
        levers = "; ".join(f"{_lever(r)}: {r['tokens_per_s'] / 1e6:.2f}M" for r in runs)
        return base | {"name": f"training throughput levers (slot unit {rec['unit']}), tokens/s: "
                               f"{levers}",
                       "metrics": {"tokens_per_s": round(t["tokens_per_s"]), "mfu": t["mfu"]},
                       "runs": runs}
    if rec["unit"].startswith("bench-eval") and lines("bench_eval.jsonl"):
        runs = [e for e in lines("bench_eval.jsonl") if e["traces"] == 1024]
        # (decode seconds, mode, line, one-off seconds before: graph captures and compiles)
        timed = [(e[f"{m}_seconds"], m, e, e.get(f"{m}_prepare_seconds")) for e in runs
                 for m in e["modes"]]
        if timed:
            best = min(timed, key=lambda t: t[0])
            levers = "; ".join(f"{m} batch {e['batch_size']}: {s:.2f} s"
                               + (f" (+{p:.1f} s prepare)" if p else "") for s, m, e, p in timed)
            metrics = {"eval_1024_seconds": best[0]}
            if best[3] is not None:
                metrics["eval_1024_prepare_seconds"] = best[3]
            return base | {"name": f"evaluation speed of 1,024 traces (slot unit {rec['unit']}): "
                                   f"{levers}", "metrics": metrics, "runs": runs}
    if rec["unit"] == "learn-99" and lines("bench_learn.json"):
        r = lines("bench_learn.json")[-1]
        # the goal counts data generation too: the corpus build plus the training to 99%
        to_99 = (r["to_99"] or {}).get("seconds")
        return base | {"name": "time to 99% ID EM, data generation included (slot unit learn-99)",
                       "metrics": {"time_to_99_seconds": None if to_99 is None else
                                   round(to_99 + r.get("data_seconds", 0), 1),
                                   "train_seconds": r["train_seconds"],
                                   "data_seconds": r.get("data_seconds")},
                       "em_curve": r["curve"]}
    return None


def _lever(r: dict) -> str:
    """A ``bench train`` line's settings in a few words."""
    extra = [" + compiled optimizer"] if r.get("compile_optimizer") else []
    extra += [f" {k}={v}" for k, v in r.get("model_overrides", {}).items()]
    return (f"{r.get('preset', 'paper')} mb {r['micro_batch_size']} "
            f"{r.get('compile_mode') or 'eager'}{''.join(extra)}")


def import_slot(files_at, done_dir=DONE_DIR, keep=KEEP_DIR, report=print,
                results_dir=Path("benchmarks/results"), git_commit: str = "?") -> list[str]:
    """After a slot (``files_at``: the files it returned): a done record per finished unit in
    ``done_dir`` with, in its folder (``<unit>/``), the unit's small outputs, its cache records
    packed (:data:`RECORDS_FILE`) and, where a later unit loads them, its runs' files and
    packed weights (all committed: a fresh clone resumes from them); a benchmark unit's result
    in ``results_dir`` (:func:`perf_result`); the other runs' files and weights in ``keep``
    (this machine only). A run's weights count only if every part came back whole (a call
    leaves out files over its limits): a unit whose weights a later unit needs is not done
    without them. ``git_commit``: the commit whose tree the call sent. Returns the finished
    units."""
    files_at, done_dir, keep = Path(files_at), Path(done_dir), Path(keep)
    units = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(files_at / "results.tgz") as tar:
            tar.extractall(tmp, filter="data")
        res = Path(tmp) / "results"
        for rec_file in sorted(res.glob("*/done.json")):
            rec, unit_dir = json.loads(rec_file.read_text()), rec_file.parent
            rec["git_commit"] = git_commit
            lost = [r for r, ps in rec.get("run_parts", {}).items()
                    if any(not (files_at / f).is_file() or (files_at / f).stat().st_size != n
                           for f, n in ps.items())]
            if lost and rec.get("weights_needed"):
                rec["why"] = f"the weights of {', '.join(lost)} did not all come back"
                _record_attempt(done_dir, rec)
                report(f"not done: {rec['unit']} ({rec['why']})")
                continue
            for r in lost:  # nothing later loads them: done without them, as the record says
                del rec["run_parts"][r], rec["run_bytes"][r]
                rec["weights_left_out"] = "parts that did not come back"
            perf = perf_result(rec, unit_dir)
            if perf:
                Path(results_dir).mkdir(parents=True, exist_ok=True)
                (Path(results_dir) / f"{rec['date']}-slot-{rec['unit']}.json").write_text(
                    json.dumps(perf, indent=1) + "\n")
            outputs = done_dir / rec["unit"]
            shutil.rmtree(outputs, ignore_errors=True)
            for r in rec["runs"]:  # committed where a later unit loads them, else kept here
                dst = (outputs if rec.get("weights_needed") else keep) / r
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(unit_dir / r, dst)
                for part in rec.get("run_parts", {}).get(r, {}):
                    shutil.copy2(files_at / part, dst / part)
                shutil.rmtree(unit_dir / r)
            rec_file.unlink()
            if (unit_dir / RECORDS).is_dir():
                outputs.mkdir(parents=True, exist_ok=True)
                # no time in the gzip header: the same slot imported again writes the same bytes
                with gzip.GzipFile(outputs / RECORDS_FILE, "wb", mtime=0) as gz, \
                        tarfile.open(fileobj=gz, mode="w") as tar:
                    for f in sorted(p for p in (unit_dir / RECORDS).rglob("*") if p.is_file()):
                        tar.add(f, arcname=str(f.relative_to(unit_dir / RECORDS)))
                shutil.rmtree(unit_dir / RECORDS)
            if any(unit_dir.iterdir()):
                shutil.copytree(unit_dir, outputs, dirs_exist_ok=True)
            done_dir.mkdir(parents=True, exist_ok=True)
            (done_dir / f"{rec['unit']}.json").write_text(json.dumps(rec, indent=1) + "\n")
            units.append(rec["unit"])
            report(f"done: {rec['unit']} ({rec['seconds']} s)")
        for rec in json.loads((res / "slot.json").read_text())["failed"]:
            _record_attempt(done_dir, rec | {"git_commit": git_commit})
            report(f"not done: {rec['unit']} ({rec['why']})")
    size = state_bytes(done_dir) if units else 0
    if size > CARRY_LIMIT:
        report(f"warning: the committed slot state ({size / 2**20:.1f} MiB in {done_dir}) is "
               f"over the {CARRY_LIMIT / 2**20:.0f} MiB a device call has for it")
    return units


def _record_attempt(done_dir: Path, rec: dict) -> None:
    """Append a try that did not finish to ``done_dir/attempts/<unit>.json`` (committed: the
    plan's estimates learn from it, :func:`calibrate`)."""
    f = Path(done_dir) / ATTEMPTS / f"{rec['unit']}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    keep = ("unit", "date", "device", "git_commit", "rc", "seconds", "estimated_s", "why")
    tries, this = json.loads(f.read_text()) if f.exists() else [], {k: rec[k] for k in keep if k in rec}
    if this not in tries:  # the same slot imported twice counts once
        f.write_text(json.dumps(tries + [this], indent=1) + "\n")
