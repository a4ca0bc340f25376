"""``tinytrace slot``: GPU slots that add up (:mod:`tinytrace.experiments.slots`).
``status`` lists the plan's units and which are done, ``run`` (on the GPU machine) runs the next
units that fit, ``import`` records what a slot returned, ``carry`` stages the weights the next
slot needs."""
from __future__ import annotations

import json

from tinytrace.cli import at_least


def add_cli(sub) -> None:
    p = sub.add_parser("slot", help="GPU slots that resume the plan where the last one stopped",
                       description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    common = dict(scale=("--scale", dict(default="gpu")),
                  done=("--done-dir", dict(default="benchmarks/slots",
                                           help="committed done records")))

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
    r.add_argument("--restore", default="runs/gpu-slot-carry", help="carried runs")
    r.add_argument("--python", default="python3")
    r.set_defaults(func=_run)
    i = verbs.add_parser("import", help="record the units a slot finished (its returned files)")
    i.add_argument("files_at")
    i.add_argument("--done-dir", default="benchmarks/slots")
    i.add_argument("--restore", default="runs/gpu-slot-restore")
    i.add_argument("--results-dir", default="benchmarks/results")
    i.add_argument("--commit", default=None, help="the commit the call sent (default: HEAD)")
    i.set_defaults(func=_import)
    c = verb("carry", "copy the runs the next slot needs into the folder a device call carries")
    c.add_argument("--budget", type=at_least(1, float), required=True)
    c.add_argument("--restore", default="runs/gpu-slot-restore")
    c.add_argument("--to", default="runs/gpu-slot-carry")
    c.set_defaults(func=_carry)


def _plan(args):
    """The plan calibrated by the committed records: both sides of a device call choose alike."""
    from tinytrace.experiments import slots

    units, done, tried, factors = slots.calibrated_plan(
        args.scale, args.done_dir, device=args.device, eval_limit=args.eval_limit)
    return slots, units, done, tried, factors


def _status(args) -> int:
    slots, units, done, tried, factors = _plan(args)
    rows = slots.status_table(units, done, tried=tried)
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
    return 0


def _run(args) -> int:
    slots, units, done, _, _ = _plan(args)
    rep = slots.run_slot(units, done, args.budget, args.out, args.cache_dir, args.restore,
                         python=args.python, device=args.device)
    print(f"slot: {len(rep.done)} done, {len(rep.failed)} not done, "
          f"{len(rep.skipped)} left for later")
    return 0


def _import(args) -> int:
    from tinytrace.experiments import slots

    from tinytrace.provenance import git_commit

    commit = args.commit or (git_commit() or "?")[:7]
    units = slots.import_slot(args.files_at, args.done_dir, args.restore,
                              results_dir=args.results_dir, git_commit=commit)
    print(f"imported {len(units)} done units into {args.done_dir}; next: `tinytrace notebooks "
          "pages` (the performance and gpu-scale pages read these records), then commit "
          "benchmarks/ and book/")
    return 0


def _carry(args) -> int:
    slots, units, done, _, _ = _plan(args)
    runs = slots.carry(units, done, args.budget, args.restore, args.to)
    print(f"{args.to}: {', '.join(runs) or 'nothing to carry'}")
    return 0
