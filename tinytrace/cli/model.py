"""``tinytrace model export|push``: a trained run as a Hugging Face Hub model (:mod:`tinytrace.hub`)."""
from __future__ import annotations

from tinytrace.hub import export_model, push_model


def add_cli(sub) -> None:
    p = sub.add_parser("model", help="export or push a trained run as a Hub model")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="{export,push}")
    e = msub.add_parser("export", help="weights, config, logs and a model card into a folder")
    e.add_argument("run", help="a run folder (model.safetensors + config.json)")
    e.add_argument("--out", required=True)
    e.add_argument("--repo-id", default="<org>/<name>", help="the name the card uses")
    e.set_defaults(func=export_handler)
    u = msub.add_parser("push", help="upload to the Hub (needs a token)")
    u.add_argument("run")
    u.add_argument("--repo-id", required=True)
    u.add_argument("--dataset", default="<org>/tinytracing", help="the dataset the card links")
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=push_handler)


def export_handler(args) -> int:
    out = export_model(args.run, args.out, args.repo_id)
    print(f"wrote {out}")
    return 0


def push_handler(args) -> int:
    print(push_model(args.run, args.repo_id, private=args.private, dataset=args.dataset))
    return 0
