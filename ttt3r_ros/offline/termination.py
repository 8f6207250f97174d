"""How `ttt3r-ros map` (and the other offline runs) end on a signal: the one place that says it.

SIGINT (Ctrl-C), SIGTERM (`docker stop`, `timeout`, systemd) and SIGHUP (the terminal closed) all end a run the
same way: `map` finishes the frame in progress (a second signal abandons it: offline/resume.py
`StopAtFrameBoundary`), the other runs abandon it; the outputs are written complete (trajectory, map, run.json with
status "interrupted", the result bag finished and renamed: no `.partial` folder, no `.tmp` file) and the process
exits with 128 + the signal number, the shell convention, so a caller can tell them apart:

    SIGINT  -> 130      SIGTERM -> 143      SIGHUP -> 129

Python turns SIGINT into KeyboardInterrupt by itself; `stop_signals_interrupt()` makes SIGTERM and SIGHUP raise
`Terminated`, a KeyboardInterrupt subclass that remembers the signal, so every `except KeyboardInterrupt` that
saves outputs handles them too. Code that installs its own handlers (e.g. stopping at a frame boundary) raises
`interrupt_for(signum)` so the exit code still names the signal.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

# The signals that end a run like Ctrl-C does (SIGINT is Python's KeyboardInterrupt already).
STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)
# the shell's convention for "ended by signal N"
SIGNAL_EXIT_BASE = 128


class Terminated(KeyboardInterrupt):
    """A stop signal other than SIGINT, delivered as an interrupt (outputs are saved as on Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception to raise for a received stop signal: KeyboardInterrupt for SIGINT, else `Terminated`."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def signal_of(interrupt: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for (a plain one is SIGINT: Ctrl-C or an in-process interrupt)."""
    return int(getattr(interrupt, "signum", signal.SIGINT))


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code_for(signum: int) -> int:
    """128 + signal number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    return SIGNAL_EXIT_BASE + int(signum)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise `Terminated` in the main thread (where Python runs signal handlers),
    so the run saves its outputs as on Ctrl-C. A second signal while the outputs are being written raises again
    (the writer retries once, then gives up: the files stay complete because every write is atomic). The previous
    handlers come back on exit. Outside the main thread it changes nothing (Python allows handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, raise_terminated) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
