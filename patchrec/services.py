"""Local services for the deployed pipeline: a Prefect server (SQLite, 127.0.0.1), the process work pool, the
deployments of prefect.yaml and a worker. Started in the background with PID files; stopped by PID.

`patchrec services up` is idempotent: what already runs is left alone. Logs go to <state>/logs/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from patchrec.profiles import PROJECT_ROOT
from patchrec.tracking import USER_ENV

__all__ = ["POOL", "Services", "process_alive", "start_time"]

POOL = "patchrec-local"


class Services:
    """The Prefect server and worker of one state folder."""

    def __init__(self, state: Path, port: int = 4200, host: str = "127.0.0.1"):
        self.state = Path(state)
        self.port, self.host = port, host
        self.api = f"http://{host}:{port}/api"
        self.pids, self.logs = self.state / "pids", self.state / "logs"

    def env(self) -> dict[str, str]:
        """The environment of every Prefect command: this server, this state folder, nothing phoned home."""
        env = dict(os.environ)
        env.update({"PREFECT_HOME": str(self.state / "prefect"), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                    "PATCHREC_STATE": str(self.state),
                    "PATCHREC_MODEL_CACHE": env.get("PATCHREC_MODEL_CACHE", str(self.state / "models")),
                    "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"})
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for key, value in USER_ENV.items():  # the user's MLflow server if any, never one this process set
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _prefect(self, *args: str, timeout: float = 300) -> str:
        cmd = [sys.executable, "-m", "prefect", "--no-prompt", *args]
        res = subprocess.run(cmd, cwd=PROJECT_ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"`prefect {' '.join(args)}` failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res.stdout

    def pid(self, name: str) -> int | None:
        """The PID in <state>/pids/<name>.pid if that process is alive and is the one this file recorded.

        The file holds the PID and the process's start time (/proc/<pid>/stat): a PID the kernel has since
        given to another process (a reboot, a crash that left the file) is stale, never a process to stop.
        """
        f = self.pids / f"{name}.pid"
        if not f.is_file():
            return None
        fields = f.read_text().split()
        try:
            pid = int(fields[0])
        except (IndexError, ValueError):
            f.unlink()
            return None
        recorded = fields[1] if len(fields) > 1 else None
        if not process_alive(pid) or (recorded is not None and start_time(pid) != recorded) or (
                recorded is None and "prefect" not in _cmdline(pid)):
            f.unlink()
            return None
        return pid

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> int:
        if (pid := self.pid(name)) is not None:
            return pid
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", *args],
                cwd=PROJECT_ROOT,
                env={**self.env(), **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.pids / f"{name}.pid").write_text(f"{proc.pid} {start_time(proc.pid)}\n")
        return proc.pid

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start_server(self, timeout: float = 180) -> int:
        pid = self._spawn("prefect-server", ["server", "start", "--host", self.host, "--port", str(self.port)])
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.pid("prefect-server") is None:
                raise RuntimeError(f"the Prefect server exited; see {self.logs / 'prefect-server.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Prefect API at {self.api} after {timeout:.0f} s; see {self.logs}")
            time.sleep(1)
        return pid

    def create_pool(self) -> None:
        self._prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")

    def deploy(self) -> str:
        return self._prefect("deploy", "--all", "--prefect-file", str(PROJECT_ROOT / "prefect.yaml"))

    def start_worker(self, poll_seconds: int = 10) -> int:
        return self._spawn("prefect-worker", ["worker", "start", "--pool", POOL, "--type", "process"],
                           {"PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)})

    def up(self, poll_seconds: int = 10) -> dict[str, int]:
        server = self.start_server()
        self.create_pool()
        self.deploy()
        return {"prefect-server": server, "prefect-worker": self.start_worker(poll_seconds)}

    def down(self, timeout: float = 30) -> list[str]:
        """Stop the worker, then the server: SIGTERM to each process group, SIGKILL if it outlives `timeout`."""
        stopped = []
        for name in ("prefect-worker", "prefect-server"):
            pid = self.pid(name)
            if pid is None:
                continue
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while process_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not process_alive(pid):
                    break
            (self.pids / f"{name}.pid").unlink(missing_ok=True)
            stopped.append(f"{name} (pid {pid})")
        return stopped


def start_time(pid: int) -> str | None:
    """When `pid` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a child that has exited is reaped here, and a zombie counts as gone."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
