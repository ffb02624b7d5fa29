"""Clean stops on SIGTERM (what Prefect, Kubernetes and torchrun send) and SIGINT (Ctrl-C).

A long loop runs inside `stop_on_signals()`: the first signal only sets a flag, the loop sees it at its next
step boundary (`requested()`), writes a resumable checkpoint and raises `Stopped`; a second signal raises
`Stopped` at once. Outside such a loop the default handlers apply. Handlers are installed only in the main thread (the
only one Python delivers signals to) and the previous ones are restored on exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Stopped", "requested", "stop_on_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = {"depth": 0, "signal": None}


class Stopped(KeyboardInterrupt):
    """The run was asked to stop by a signal; what it finished is kept (a checkpoint when it says so)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "stopped"


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["signal"] is not None:  # the second one: stop now
        raise Stopped(f"stopped by a second {_name(signum)}", signum)
    _state["signal"] = signum


def requested() -> int | None:
    """The signal number that asked this process to stop, or None."""
    return _state["signal"]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Defer SIGTERM and SIGINT to the enclosed loop's step boundaries (see the module doc)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    if _state["depth"] == 0:
        _state["signal"] = None
        for s in _SIGNALS:
            signal.signal(s, _handler)
    _state["depth"] += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _state["depth"] -= 1
        got = _state["signal"]
        if _state["depth"] == 0:
            _state["signal"] = None
            for s, h in previous.items():
                signal.signal(s, h)
        if got is not None and not failed:
            raise Stopped(f"stopped by {_name(got)}", got)
