"""Ctrl-C and SIGTERM that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread happens to be; when that is inside a
finaliser (an HDF5 or FITS file closing, a Dask object collected), the exception is printed as
"Exception ignored" and the run goes on. The CLI's handlers therefore also record the signal, and
`check()` — called just before an output replaces what was there — raises it again, so an
interrupted run never replaces its outputs, whatever it was doing when the signal came.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM sends on scancel and at the time limit), handled like Ctrl-C."""


_pending: KeyboardInterrupt | None = None


def _on_signal(signum, frame):
    global _pending
    _pending = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    raise _pending


def check() -> None:
    """Raise the interrupt recorded since `handled()` was last called, if any."""
    if _pending is not None:
        raise _pending


def handled() -> None:
    """The recorded interrupt has been dealt with (reported, clean-up done)."""
    global _pending
    _pending = None


@contextlib.contextmanager
def recorded():
    """While a command runs in the main thread: SIGTERM raises Terminated, SIGINT (unless it is
    ignored, as in a shell's background job) KeyboardInterrupt, and both are recorded for `check`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled()
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_signal)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
