"""``tinytrace notebooks run|pages``: execute the section notebooks, regenerate the book pages."""
from __future__ import annotations

from pathlib import Path

from tinytrace.cli import at_least, key_value
from tinytrace.report.pages import write_pages
from tinytrace.report.runner import run_notebooks
from tinytrace.report.sections import DEFAULT_OUT


def add_cli(sub) -> None:
    p = sub.add_parser("notebooks", help="execute the section notebooks with papermill")
    nsub = p.add_subparsers(dest="notebooks_command", required=True, metavar="{run,pages}")
    r = nsub.add_parser("run", help="execute notebooks into a folder (default book/sections)")
    r.add_argument("--scale", required=True, help="smoke | cpu | cpu-long | gpu | paper")
    r.add_argument("--only", action="append", metavar="NAME",
                   help="a notebook (stem, 03-style prefix or name part); repeat or comma-separate")
    r.add_argument("--jobs", type=at_least(1), default=1,
                   help="notebooks at once; with several GPUs each gets its own")
    r.add_argument("--out", default=str(DEFAULT_OUT), help="where executed notebooks go")
    r.add_argument("--cache-dir", default="cache", help="datasets, runs and evaluations cache")
    r.add_argument("--src", default=None, help="source notebooks folder (default notebooks/)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--device", default=None, help="e.g. cpu to ignore GPUs")
    r.add_argument("-p", "--param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="another notebook parameter, one of a notebook's parameters cell "
                        "(VALUE parsed as JSON, else a string)")
    r.add_argument("--no-train", action="store_true",
                   help="train nothing: a notebook whose runs are not all in the cache fails "
                        "(e.g. after the runs were trained elsewhere: --list-runs, a GPU slot)")
    r.add_argument("--timeout", type=float, default=None, help="seconds per notebook")
    r.add_argument("--missing", action="store_true",
                   help="only notebooks not executed into --out yet (e.g. a fresh checkout)")
    r.add_argument("--records", default=None, metavar="DIR",
                   help="store of the cache's records (evaluations, run metadata) to import "
                        "first and write after each notebook (default OUT/records)")
    r.add_argument("--no-records", action="store_true", help="no store of records")
    r.add_argument("--no-pages", action="store_true",
                   help="do not regenerate the book's pages (notebooks pages; done when --out "
                        "is book/sections)")
    r.set_defaults(func=_run_cli)
    pages = ("regenerate book/results.md, datasets.md, performance.md (and "
             "figures/performance-loss.png), gpu_scale.md and the scales table of "
             "book/reproducing.md")
    g = nsub.add_parser("pages", help=pages, description=pages[0].upper() + pages[1:] + ".")
    g.add_argument("--book", default="book")
    g.add_argument("--sections", default=None, help="default BOOK/sections")
    g.add_argument("--data", default="data/tinytracing")
    g.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a page is out of date")
    g.set_defaults(func=_pages_cli)


def _run_cli(args) -> int:
    outcomes = run_notebooks(args.scale, only=args.only, jobs=args.jobs, out=args.out,
                             cache_dir=args.cache_dir, src=args.src, seed=args.seed,
                             device=args.device, params=dict(args.param), timeout=args.timeout,
                             missing=args.missing,
                             records=False if args.no_records else args.records,
                             train=not args.no_train)
    if not args.no_pages and Path(args.out).resolve() == DEFAULT_OUT.resolve() and Path("book").is_dir():
        for path in write_pages("book", args.out, check=False):
            print(f"wrote {path}")
    return 0 if all(o.ok for o in outcomes) else 1


def _pages_cli(args) -> int:
    changed = write_pages(args.book, args.sections, args.data, check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and not changed:
        print("pages up to date")
    return 1 if args.check and changed else 0

