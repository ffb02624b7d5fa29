"""The built wheel works outside the source tree: SQL files ship as package data and `patchrec data prepare` runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from patchrec.profiles import PROJECT_ROOT


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_wheel_prepares_data_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(PROJECT_ROOT)], cwd=tmp_path)
    (wheel,) = wheels.glob("patchrec-*.whl")
    env = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=tmp_path)
    py = env / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    # the dependencies come from this environment's site-packages (a plain path: its .pth files, among them
    # the editable install of the source tree, are not processed); patchrec itself comes from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path)
    work = tmp_path / "work"
    shutil.copytree(PROJECT_ROOT / "examples" / "tiny", work / "tiny")
    where = _run([str(py), "-c", "import patchrec.sql as s; print(s.__file__); print(len(s.sql_names()))"], work)
    module, names = where.split()
    assert Path(module).is_relative_to(env) and int(names) == len(list((PROJECT_ROOT / "sql").glob("*.sql")))
    out = _run([str(env / "bin" / "patchrec"), "data", "prepare", "--format", "generic", "--raw", "tiny/raw",
                "--source-config", "tiny/source.yaml", "--protocol", "loo", "--min-history", "2", "--out",
                "prepared", "--json"], work)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["rows_read"] == summary["rows_accepted"] + summary["rows_quarantined"] + \
        summary["rows_deduplicated"] + summary["rows_filtered"]
    assert summary["interactions"] > 0 and (work / "prepared" / "manifest.json").is_file()
