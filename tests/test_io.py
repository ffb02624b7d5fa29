"""Atomic writes and the demo's verified MovieLens download."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from patchrec.data.download import ensure_ml100k
from patchrec.io import atomic_path, write_json


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a table")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new version, never finished")
        raise RuntimeError("crash")
    assert target.read_text() == '{\n  "a": 1\n}\n'  # the old complete version survives


def _zip(tmp_path):
    path = tmp_path / "src" / "ml-100k.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t1000000000\n")
        zf.writestr("ml-100k/u.item", "1|A (1990)|x\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_is_verified_then_extracted(tmp_path):
    path, sha = _zip(tmp_path)
    folder = ensure_ml100k(None, tmp_path / "cache", url=path.as_uri(), sha256=sha)
    assert (folder / "u.data").read_text().startswith("1\t1\t5")
    assert ensure_ml100k(tmp_path / "missing", tmp_path / "cache", url="file:///nonexistent", sha256=sha) == folder


def test_download_with_wrong_checksum_is_refused(tmp_path):
    path, _ = _zip(tmp_path)
    with pytest.raises(RuntimeError, match="differs from the pinned"):
        ensure_ml100k(None, tmp_path / "cache", url=path.as_uri(), sha256="0" * 64)
    assert not (tmp_path / "cache" / "ml-100k.zip").exists()
    assert not (tmp_path / "cache" / "ml-100k").exists()
