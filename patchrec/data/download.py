"""MovieLens-100k for the demo: a local folder when one exists, else GroupLens' zip with a pinned checksum."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
import zipfile
from pathlib import Path

from patchrec.io import atomic_path

__all__ = ["ML100K_SHA256", "ML100K_URL", "ensure_ml100k"]

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
_NEEDED = ("u.data", "u.item")


def ensure_ml100k(local: Path | None, cache: Path, url: str = ML100K_URL, sha256: str = ML100K_SHA256) -> Path:
    """Folder holding u.data and u.item: `local` if it has them, else a verified download under `cache`.

    Raises:
        RuntimeError: the download failed or its checksum differs from the pinned one.
    """
    if local is not None and all((Path(local) / f).is_file() for f in _NEEDED):
        return Path(local)
    target = Path(cache) / "ml-100k"
    if all((target / f).is_file() for f in _NEEDED):
        return target
    zip_path = Path(cache) / "ml-100k.zip"
    if not zip_path.exists():
        print(f"downloading {url} ...", flush=True)
        try:
            with atomic_path(zip_path) as tmp, urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
        except OSError as exc:
            raise RuntimeError(f"could not download {url} ({exc}); put the ml-100k folder at {target}") from exc
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    if digest != sha256:
        zip_path.unlink()
        raise RuntimeError(f"{url}: sha256 {digest} differs from the pinned {sha256}; file removed")
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp.parent / (tmp.name + ".x"))
        shutil.move(tmp.parent / (tmp.name + ".x") / "ml-100k", tmp)
        shutil.rmtree(tmp.parent / (tmp.name + ".x"))
    return target
