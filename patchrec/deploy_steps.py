"""Prefect deployment steps of prefect.yaml.

`prefect deploy` records the clone it runs in (a build step's `pwd`), and every flow run's pull step enters that
clone with `enter_clone`; a worker started the ordinary Prefect way (`prefect worker start --pool
patchrec-local`, from any directory, with no project variables) runs the deployments. What a run needs and
lacks stops it at once with one line saying what to do, not a traceback from a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DeploymentSetupError", "enter_clone"]

ENTRYPOINT = Path("flows") / "pipeline.py"


class DeploymentSetupError(RuntimeError):
    """The deployment cannot run on this worker; the message says what to set or run."""


def enter_clone(directory: str) -> dict[str, str]:
    """Change into the patchrec clone `directory` (recorded by `prefect deploy`); returns {"directory": ...}.

    `$PATCHREC_HOME`, when the worker has it, wins: a clone moved after deploying is found without redeploying.
    """
    home = os.environ.get("PATCHREC_HOME") or directory
    if not home or "{{" in home:
        raise DeploymentSetupError(
            f"patchrec deployment: no clone path (got {home!r}); run `prefect deploy --all` from the patchrec clone, "
            "or set PATCHREC_HOME=<clone> for the worker")
    path = Path(home).expanduser()
    if not (path / ENTRYPOINT).is_file():
        what = "does not exist" if not path.exists() else f"has no {ENTRYPOINT}"
        raise DeploymentSetupError(
            f"patchrec deployment: the clone {path} {what} on this worker; run `prefect deploy --all` again from "
            "the clone, or set PATCHREC_HOME=<clone> for the worker")
    os.chdir(path)
    return {"directory": str(path.resolve())}
