"""`patchrec services down` stops only the processes it started: a stale PID file never kills a stranger."""

from __future__ import annotations

import subprocess

import pytest

from patchrec.services import Services, process_alive, start_time


@pytest.mark.parametrize("content", ["{pid} 1\n", "{pid}\n", "garbage\n"])
def test_stale_pid_file_does_not_kill_the_process_now_holding_that_pid(tmp_path, content):
    """Audit: `services down` sent SIGTERM/SIGKILL to whatever process group held the PID of a stale file."""
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        svc = Services(tmp_path / "state")
        svc.pids.mkdir(parents=True)
        for name in ("prefect-worker", "prefect-server"):
            (svc.pids / f"{name}.pid").write_text(content.format(pid=stranger.pid))
        assert svc.down(timeout=1) == []
        assert process_alive(stranger.pid) and stranger.poll() is None
        assert not list(svc.pids.iterdir())  # the stale files are gone
    finally:
        stranger.kill()
        stranger.wait()


def test_pid_file_of_a_started_process_is_recognised(tmp_path):
    svc = Services(tmp_path / "state")
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        svc.pids.mkdir(parents=True)
        (svc.pids / "prefect-worker.pid").write_text(f"{proc.pid} {start_time(proc.pid)}\n")
        assert svc.pid("prefect-worker") == proc.pid
        assert svc.down(timeout=5) == [f"prefect-worker (pid {proc.pid})"]
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
