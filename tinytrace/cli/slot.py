"""``tinytrace slot``: GPU slots that add up (:mod:`tinytrace.experiments.slots`).
``status`` lists the plan's units and which are done, ``run`` (on the GPU machine) runs the next
units that fit, ``import`` records what a slot returned (committed, with what later slots need)."""
from __future__ import annotations

import json

from tinytrace.cli import at_least


def add_cli(sub) -> None:
    p = sub.add_parser("slot", help="GPU slots that resume the plan where the last one stopped",
                       description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    common = dict(scale=("--scale", dict(default="gpu")),
                  done=("--done-dir", dict(default="benchmarks/slots",
                                           help="committed done records, with each unit's "
                                                "records and the weights later units load")))

    def verb(name, help):
        v = verbs.add_parser(name, help=help)
        for flag, kw in common.values():
            v.add_argument(flag, **kw)
        v.add_argument("--device", default="cuda", help="where the benchmark units run")
        v.add_argument("--eval-limit", type=at_least(1), default=1024,
                       help="traces of the decoding benchmark")
        return v

    st = verb("status", "the plan's units: cost, done or what they wait for")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)
    r = verb("run", "run the next pending units that fit --budget seconds (on the GPU machine)")
    r.add_argument("--budget", type=at_least(1, float), required=True, help="seconds")
    r.add_argument("--out", required=True, help="what comes back: results.tgz, weight parts")
    r.add_argument("--cache-dir", default="cache")
    r.add_argument("--python", default="python3")
    r.set_defaults(func=_run)
    i = verbs.add_parser("import", help="record the units a slot finished (its returned files)")
    i.add_argument("files_at")
    i.add_argument("--done-dir", default="benchmarks/slots")
    i.add_argument("--keep", default="runs/gpu-slot-weights",
                   help="where the weights no later unit loads are kept (not committed)")
    i.add_argument("--results-dir", default="benchmarks/results")
    i.add_argument("--commit", default=None, help="the commit the call sent (default: HEAD)")
    i.set_defaults(func=_import)


def _plan(args):
    """The plan calibrated by the committed records: both sides of a device call choose alike."""
    from tinytrace.experiments import slots

    units, done, tried, factors = slots.calibrated_plan(
        args.scale, args.done_dir, device=args.device, eval_limit=args.eval_limit)
    return slots, units, done, tried, factors


def _status(args) -> int:
    slots, units, done, tried, factors = _plan(args)
    rows = slots.status_table(units, done, tried, slots.missing_weights(units, done, args.done_dir))
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['unit']:<20} {r['cost_s']:>5} s  {r['state']:<40} {r['description']}")
    n, stuck = slots.slots_needed(units, done)
    print(f"{sum(u.name in done for u in units)} of {len(units)} done; {n} more slots of "
          f"{slots.UNIT_MAX_S} s" + (f"; no slot can take {len(stuck)}: {', '.join(stuck)}"
                                    if stuck else ""))
    print(slots.calibration_text(factors))
    print(f"committed slot state: {slots.state_bytes(args.done_dir) / 2**20:.1f} MiB of the "
          f"{slots.CARRY_LIMIT / 2**20:.0f} MiB a device call has for it")
    return 0


def _run(args) -> int:
    slots, units, done, _, _ = _plan(args)
    rep = slots.run_slot(units, done, args.budget, args.out, args.cache_dir, args.done_dir,
                         python=args.python, device=args.device)
    print(f"slot: {len(rep.done)} done, {len(rep.failed)} not done, "
          f"{len(rep.skipped)} left for later")
    return 0


def _import(args) -> int:
    from tinytrace.experiments import slots

    from tinytrace.provenance import git_commit

    commit = args.commit or (git_commit() or "?")[:7]
    units = slots.import_slot(args.files_at, args.done_dir, args.keep,
                              results_dir=args.results_dir, git_commit=commit)
    print(f"imported {len(units)} done units into {args.done_dir}; next: `tinytrace notebooks "
          "pages` (the performance and gpu-scale pages read these records), then commit "
          "benchmarks/ and book/")
    return 0
