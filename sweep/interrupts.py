"""Ctrl-C and SIGTERM of a running sweep: owned by the ``sweep`` command, never by the library.

The command installs :func:`handled` around a sweep: the first signal sets :data:`INTERRUPTED` and asks Ray Tune
to stop (its SIGUSR1 handler, which ``tune.run`` installs: Tune then saves the sweep's state and the tracking
callback marks what was running KILLED); a second one aborts at once. Ray Tune's own SIGINT handler is turned off
(``TUNE_DISABLE_SIGINT_HANDLER``, see :data:`sweep.cluster.RAY_ENV`), so a library caller (a notebook, pytest)
keeps its handlers: :func:`kept` restores whatever Tune replaced while a sweep ran.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sweep.errors import Fault

INTERRUPTED = threading.Event()
"""Set by the first Ctrl-C or SIGTERM of a sweep the command runs."""
SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


FAULT: list[Fault] = []
"""Why the sweep stopped itself, when it did (the first fault): one no trial can get past, such as a full disk."""


def stop_for(fault: Fault) -> None:
    """Stop the sweep as Ctrl-C does (Tune saves its state, what was running ends KILLED, ``--resume`` goes on), for
    ``fault``; the command then says it in one line. From any thread; the first fault is the one kept."""
    if FAULT:
        return
    FAULT.append(fault)
    INTERRUPTED.set()
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if callable(handler) and getattr(handler, "__name__", "") == "signal_interrupt_tune_run":
        with suppress(ValueError):  # it also puts SIGINT's handler back, which only the main thread may do
            handler(signal.SIGUSR1, None)


def _ask_tune_to_stop(frame: Any) -> None:
    tune_handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if callable(tune_handler) and getattr(tune_handler, "__name__", "") == "signal_interrupt_tune_run":
        tune_handler(signal.SIGUSR1, frame)
    else:  # before or after Tune's loop: nothing to save, stop where we are
        raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[None]:
    """The command's handlers for the block: the first Ctrl-C or SIGTERM stops the sweep cleanly (resumable), a
    second raises KeyboardInterrupt. The handlers found before are back afterwards."""
    INTERRUPTED.clear()

    def interrupted(signum: int, frame: Any) -> None:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        print("interrupted: stopping the trials and saving the sweep's state…", file=sys.stderr, flush=True)
        INTERRUPTED.set()
        _ask_tune_to_stop(frame)

    with kept():
        try:
            signal.signal(signal.SIGINT, interrupted)
            signal.signal(signal.SIGTERM, interrupted)
        except ValueError:  # not the main thread: whoever runs us has the signals
            pass
        yield


@contextmanager
def kept() -> Iterator[None]:
    """Whatever handlers the block (Ray Tune's ``fit``) installs are replaced by the ones found before it."""
    try:
        saved = {s: signal.getsignal(s) for s in SIGNALS}
    except ValueError:
        saved = {}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            with suppress(ValueError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
