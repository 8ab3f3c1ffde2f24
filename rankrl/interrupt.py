"""Ctrl-C and ``kill`` without losing work: SIGINT / SIGTERM become a *request* that a long job polls between
steps, so it can write a checkpoint and exit with status 130 instead of dying mid-write (core: no domain imports).

A second signal while the first is being honoured raises ``KeyboardInterrupt`` at once (the user insists).
Jobs poll the flag where stopping is safe: between optimizer steps (``FineTuneRun``), in an SB3 callback's
``_on_step`` (returning False stops ``learn``), in a TRL ``TrainerCallback`` (``control.should_save`` and
``control.should_training_stop``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: exit status of a job stopped by SIGINT / SIGTERM after it saved its checkpoint (128 + SIGINT, the shell's)
EXIT_INTERRUPTED = 130


class StopRequest:
    """Set once a SIGINT or SIGTERM arrived; ``bool(request)`` says whether to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        """``"SIGINT"``, ``"SIGTERM"`` or ``""``."""
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded :class:`StopRequest` instead of killing the process
    (a second one raises ``KeyboardInterrupt``); the previous handlers come back on exit. Outside the main thread
    (signals cannot be caught there) the request simply never fires.

    >>> with stop_on_signals() as stop:
    ...     bool(stop)
    False
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request:
            raise KeyboardInterrupt
        request.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing the current step, saving a checkpoint, then exiting "
              "(send it again to stop at once)", flush=True)  # fmt: skip

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in old.items():
            signal.signal(s, h)
