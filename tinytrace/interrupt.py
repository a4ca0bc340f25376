"""Stopping a long job at a safe point on SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption).

A job runs its loop inside :func:`stop_requests`, polls the flag it yields at the points where
its state can be saved, saves it and raises :class:`Interrupted`; the command line prints the
one-line message and exits with 128 + the signal's number (130, 143). A base utility: it
imports nothing from the package, so every layer may use it.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A job stopped on a signal after saving what it could: ``kept`` says what and where;
    ``resume_flag`` is the option that continues it when added to the same command.
    ``rerun=False``: no command continues it (``kept`` says what to do instead)."""

    def __init__(self, signum: int, kept: str, resume_flag: str | None = "--resume",
                 rerun: bool = True):
        self.signum, self.kept, self.resume_flag, self.rerun = signum, kept, resume_flag, rerun
        super().__init__(f"stopped by {signal.Signals(signum).name}; {kept}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The signal received since the job entered :func:`stop_requests` (None: none yet)."""

    signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def signal_handlers(handlers: dict):
    """Install ``handlers`` (signal -> handler) for the block and restore the previous ones
    after it. Outside the main thread, where Python cannot install handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: set outside Python


@contextmanager
def stop_requests(signals=SIGNALS):
    """Turn ``signals`` into a :class:`StopRequest` the job polls, instead of an exception
    raised wherever the job happens to be (mid-step, mid-save). Later signals change nothing:
    the job is already stopping, and a launcher (torchrun) forwards the terminal's Ctrl-C to
    processes that got it already. The previous handlers are restored on exit, so a loop run
    inside a notebook or a test leaves them as it found them. Outside the main thread, where
    Python cannot install handlers, the flag never sets and signals keep their usual effect."""
    stop = StopRequest()

    def handler(signum, frame):
        if not stop:
            stop.signum = signum

    with signal_handlers({s: handler for s in signals}):
        yield stop
