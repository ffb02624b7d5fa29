"""Named kill points for crash tests: `PATCHREC_KILL_AT=<point>` makes the process SIGKILL itself there.

The crash-consistency tests start a real process with this variable and check that a re-run finishes what
the killed one left; unset (always, outside those tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "point"]

ENV = "PATCHREC_KILL_AT"


def point(name: str) -> None:
    """Die here, as a power cut or the OOM killer would, when `PATCHREC_KILL_AT` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
