"""Command line: ``tinytrace`` / ``python -m tinytrace``.

Every command's parser and handler live in ``tinytrace/cli/<command>.py`` (``add_cli(subparsers)``);
handlers only parse and call the library. Only the module of the command being run is imported,
so ``tinytrace trace`` never loads torch.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import signal
import sys
import threading

from tinytrace.interrupt import Interrupted

# command -> (module, function registering the command's parser, one-line help)
COMMANDS = {
    "data": ("tinytrace.cli.data", "add_data_cli", "build or push Hub-layout datasets"),
    "trace": ("tinytrace.cli.data", "add_trace_cli", "trace a snippet (file or stdin)"),
    "train": ("tinytrace.cli.train", "add_cli", "train a model with Accelerate"),
    "eval": ("tinytrace.cli.evaluate", "add_cli", "greedy exact-match evaluation of a checkpoint"),
    "bench": ("tinytrace.cli.bench", "add_cli", "benchmarks that print one JSON line"),
    "sft": ("tinytrace.cli.sft", "add_cli", "LoRA fine-tuning with instruction masking"),
    "experiment": ("tinytrace.cli.experiment", "add_cli", "run one of the paper's experiments"),
    "notebooks": ("tinytrace.cli.notebooks", "add_cli", "execute the section notebooks with papermill"),
    "model": ("tinytrace.cli.model", "add_cli", "export or push a trained run as a Hub model"),
    "slot": ("tinytrace.cli.slot", "add_cli", "GPU slots that resume the plan of GPU work"),
}


def key_value(text: str) -> tuple[str, object]:
    """argparse type of ``KEY=VALUE`` options (``--set``, ``--model-arg``, ``-p``): the value
    is parsed as JSON when it is JSON (``9``, ``[1, 2]``, ``true``), else kept as text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def at_least(minimum: int, kind=int):
    """argparse type: a number of ``kind`` that is >= ``minimum``."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return v

    return parse


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one clear line on stderr, exit code 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="tinytrace", description="TinyTracing companion")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, func, help_) in COMMANDS.items():
        if wanted in (None, name):
            getattr(importlib.import_module(module), func)(sub)
        else:
            sub.add_parser(name, help=help_)  # listed in --help, not loaded
    return parser


# the HTTP clients the Hub's client uses (one or another with its version) and the Hub's own
_NETWORK_PACKAGES = {"httpx", "httpx2", "httpcore", "requests", "urllib3", "huggingface_hub"}


def _network_error(e: BaseException) -> bool:
    """Whether ``e`` is a connection or Hub error (``data push``, ``model push`` without a
    network or with a bad token): a class of those packages somewhere in its bases."""
    return any(c.__module__.split(".")[0] in _NETWORK_PACKAGES for c in type(e).__mro__)


def _terminate(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    """Run a command. A signal that stops it ends in one line on stderr and exit 128 + the
    signal's number: a job's :class:`Interrupted` names what it kept and the command that
    continues it; SIGINT or SIGTERM outside a job's safe points (loading, evaluating) keeps
    only what was saved before. SIGTERM's handler is restored on return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # imports the command's module (torch, for most): a second or two
        args = build_parser(argv).parse_args(argv)
    except KeyboardInterrupt:
        sys.stderr.write("tinytrace: stopped by SIGINT while starting; nothing was done\n")
        return 128 + signal.SIGINT
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as e:  # OSError: a missing file, a full disk, the network
        sys.stderr.write(f"tinytrace {args.command}: error: {e}\n")
        return 2
    except Interrupted as e:
        if not e.rerun:
            sys.stderr.write(f"tinytrace {args.command}: {e}\n")
            return e.exit_code
        # add the resume option where this command has one and it is off (an experiment's
        # cache resumes by itself: the same command continues it)
        flag = e.resume_flag
        off = flag is not None and getattr(args, flag.lstrip("-").replace("-", "_"), None) is False
        again = [*argv, flag] if off else argv
        sys.stderr.write(f"tinytrace {args.command}: {e}; to continue, run: "
                         f"{shlex.join(['tinytrace', *again])}\n")
        return e.exit_code
    except KeyboardInterrupt as e:  # outside a job's safe points
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        sys.stderr.write(f"tinytrace {args.command}: stopped by {signal.Signals(signum).name}; "
                         f"only what was saved before (checkpoints, cached results), if "
                         f"anything, is kept\n")
        return 128 + signum
    except Exception as e:
        if not _network_error(e):
            raise
        sys.stderr.write(f"tinytrace {args.command}: error: {type(e).__name__}: {e}\n")
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
