"""``tinytrace data build|release|push`` and ``tinytrace trace``: the handlers parse the
arguments and call the library.

:mod:`tinytrace.data` (numpy, pyarrow, huggingface_hub) is imported inside the data handlers so
that the other commands, ``tinytrace trace`` included, start without it; nothing here imports
torch.
"""
from __future__ import annotations

import sys

from tinytrace.cli import at_least, key_value
from tinytrace.lang.config import PRESETS, get_preset
from tinytrace.lang.program import UnsupportedCode
from tinytrace.lang.tracer import Rejected, trace


def add_data_cli(sub) -> None:
    p = sub.add_parser("data", help="build or push Hub-layout datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{build,release,push}")
    b = dsub.add_parser("build", help="generate, trace, filter, dedup, split and write a config")
    b.add_argument("--preset", required=True, choices=sorted(PRESETS), metavar="PRESET",
                   help=f"generator preset: {', '.join(PRESETS)}")
    b.add_argument("--num-snippets", type=at_least(0), required=True,
                   help="unique snippets in all splits together")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=at_least(0), default=None, help="default: all cores")
    b.add_argument("--validation-size", type=at_least(0), default=1024)
    b.add_argument("--test-size", type=at_least(0), default=1024)
    b.add_argument("--context", type=at_least(0), default=512,
                   help="window of the determinism filter, in tokens")
    b.add_argument("--deterministic-train", action="store_true",
                   help="apply the determinism filter to train too")
    b.add_argument("--config-name", default=None, help="config name (default: the preset)")
    b.add_argument("--no-tokens", action="store_true", help="skip the uint8 token streams")
    b.add_argument("--set", action="append", default=[], type=key_value, metavar="FIELD=JSON",
                   help="override a generator field, e.g. --set max_literal=9")
    b.add_argument("--out", required=True, help="dataset folder (Hub layout)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_build)
    r = dsub.add_parser("release", help="build the shipped test sets (tinytrace.data.release_sets) "
                                        "and their dataset card")
    r.add_argument("--out", default="data/tinytracing", help="dataset folder (default: %(default)s)")
    r.add_argument("--only", action="append", metavar="NAME",
                   help="rebuild only these configs (repeat or comma-separate)")
    r.add_argument("--list", action="store_true", help="print the configs and exit")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_release)
    u = dsub.add_parser("push", help="push a built dataset folder to the Hugging Face Hub")
    u.add_argument("dir")
    u.add_argument("--repo-id", required=True, help="ORG/NAME")
    u.add_argument("--token", default=None, help="default: HF_TOKEN / cached login")
    u.add_argument("--private", action="store_true")
    u.add_argument("--include-tokens", action="store_true")
    u.set_defaults(func=_push)


def add_trace_cli(sub) -> None:
    t = sub.add_parser("trace", help="trace a snippet (file or stdin) and print the example")
    t.add_argument("file", nargs="?", help="snippet file (default: stdin)")
    t.add_argument("--max-loop-iterations", type=at_least(0), default=100)
    t.add_argument("--value-range", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="reject values outside [LO, HI] (default: no limit)")
    t.set_defaults(func=_trace)


def _build(args) -> int:
    from tinytrace.data import BuildConfig, build

    try:
        gen = get_preset(args.preset, **dict(args.set))
    except TypeError as e:  # a --set value of the wrong type
        raise ValueError(f"bad --set field: {e}") from None
    cfg = BuildConfig(
        gen,
        num_snippets=args.num_snippets,
        seed=args.seed,
        test_size=args.test_size,
        validation_size=args.validation_size,
        context=args.context,
        deterministic_train=args.deterministic_train,
        config_name=args.config_name,
        tokens=not args.no_tokens,
    )
    summary = build(cfg, args.out, workers=args.workers, progress=not args.quiet)
    tok = summary["tokens"]
    print(
        f"built {args.out}/{summary['config_name']}: "
        + ", ".join(f"{s} {n}" for s, n in summary["splits"].items() if n)
        + f" in {summary['seconds']} s ("
        + ", ".join(f"{s} mean {v['mean_tokens']} tokens" for s, v in tok.items())
        + ")"
    )
    return 0


def _release(args) -> int:
    from tinytrace.data import build_release, release_sets

    if args.list:
        for rs in release_sets():
            kind = "test split" if rs.split_of else "stand-alone"
            print(f"{rs.name:<22} n={rs.size} seed={rs.seed:<5} {kind:<11} {rs.used_by}")
        return 0
    only = [n for item in args.only or [] for n in item.split(",") if n]
    build_release(args.out, only=only or None, log=None if args.quiet else print)
    return 0


def _push(args) -> int:
    from tinytrace.data import push

    try:  # OSError and the Hub client's errors end in main's one line, exit 2, as here
        url = push(args.dir, args.repo_id, token=args.token, private=args.private,
                   include_tokens=args.include_tokens)
    except RuntimeError as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    print(url)
    return 0


def _trace(args) -> int:
    if args.file:
        with open(args.file) as f:
            code = f.read()
    else:
        code = sys.stdin.read()
    vr = tuple(args.value_range) if args.value_range else (-(10**18), 10**18)
    try:
        print(trace(code, vr, args.max_loop_iterations))
    except UnsupportedCode as e:
        sys.stderr.write(f"tinytrace trace: unsupported code: {e}\n")
        return 2
    except Rejected as r:
        cause = f" ({r.cause})" if r.cause else ""
        sys.stderr.write(f"tinytrace trace: rejected by the runtime filter: {r.reason}{cause}\n")
        return 1
    return 0
