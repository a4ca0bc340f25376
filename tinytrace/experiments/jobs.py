"""An experiment's training runs as independent jobs: one shell command per run
(:func:`run_commands`, what ``tinytrace experiment NAME --list-runs`` prints) and their
submission to a cluster through a `submitit <https://github.com/facebookincubator/submitit>`_
executor (:func:`submit_runs`).

Every command trains one run (``tinytrace experiment NAME --run INDEX``) into the same cache
folder, keyed as the experiment keys it, so running the experiment afterwards with that cache
only evaluates.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from .runners import training_runs
from .scales import get_scale

LAUNCHER = "accelerate launch"


def run_commands(name: str, scale="smoke", cache_dir="cache", seed: int = 0,
                 launcher: str = LAUNCHER, device: str | None = None) -> list[str]:
    """One shell command per training run of experiment ``name`` at ``scale``, in order:
    ``<launcher> -m tinytrace experiment NAME --scale S --run I --cache-dir DIR --seed N``.
    ``cache_dir`` is written as given: every job (and the final experiment run) must see the
    same folder under the same name, e.g. an absolute path on a shared file system."""
    scale_name = get_scale(scale).name
    tail = f" --device {shlex.quote(device)}" if device else ""
    return [f"{launcher} -m tinytrace experiment {name} --scale {scale_name} --run {i} "
            f"--cache-dir {shlex.quote(str(cache_dir))} --seed {seed}{tail}"
            for i in range(len(training_runs(name, scale, seed)))]


def run_command(command: str) -> None:
    """Run one shell command of :func:`run_commands` (what a submitted job calls); a failure
    raises, so the job fails. The folder of the job's Python comes first on PATH, so the
    launcher (``accelerate``) is the one installed beside it, also where no environment was
    activated (a job started as ``.venv/bin/python script.py``)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run(shlex.split(command), check=True, env=env)


def submit_runs(executor, name: str, scale="smoke", cache_dir="cache", seed: int = 0,
                launcher: str = LAUNCHER, device: str | None = None) -> list:
    """Submit one job per training run of ``name`` to a submitit ``executor``
    (``submitit.AutoExecutor`` on a SLURM cluster, ``submitit.LocalExecutor`` to try it on one
    machine); the rest go as one job array. When some runs need the first one's artifacts
    (:attr:`TrainingRun.after_first`), this call waits for the first job before submitting
    them. Returns the jobs in run order (``job.result()`` waits for one and raises if it
    failed)."""
    runs = training_runs(name, scale, seed)
    commands = run_commands(name, scale, cache_dir, seed, launcher, device)
    first = executor.submit(run_command, commands[0])
    if any(r.after_first for r in runs[1:]):
        first.result()
    rest = []
    if commands[1:]:
        with executor.batch():
            rest = [executor.submit(run_command, c) for c in commands[1:]]
    return [first, *rest]
