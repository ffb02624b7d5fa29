"""A prepared folder as published generations: readers see one complete, validated generation or none.

`out` is a symbolic link to `<out>.generations/gen-<id>`. A new generation is built and validated in
`<out>.generations/build-<id>`, renamed to `gen-<id>`, and published by replacing the link in one
rename, so a crash or a failed validation at any point leaves `out` on the previous generation; a build
that is not published is removed when its preparation ends, and a generation a crash left renamed but
unlinked (an orphan) by the next preparation. Raw files staged once are shared by every generation in
`<out>.generations/cache`. One preparation at a time per folder (a lock file); the current and the
previous published generation are kept, older ones removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from patchrec import faults
from patchrec.contract import MANIFEST
from patchrec.data.formats import SourceError

__all__ = ["Build", "building", "cache_dir", "current", "root"]

KEEP = 2  # published generations kept: the current one and the one before it
_MARKERS = ("prepare.json", "ingest.json")  # files by which an older, unversioned prepared folder is recognised


def root(out: Path) -> Path:
    """The folder that holds every generation of `out`, its staging cache and its lock."""
    out = Path(out)
    return out.parent / f"{out.name}.generations"


def cache_dir(out: Path) -> Path:
    """Raw files parsed once (`staged/`, `rejects/`), shared by all generations; DuckDB's spill space."""
    return root(out) / "cache"


def current(out: Path) -> Path | None:
    """The published generation `out` points at, or None when nothing was published yet."""
    out = Path(out)
    if out.is_symlink():
        target = out.resolve()
        return target if (target / MANIFEST).is_file() else None
    if out.exists():
        raise SourceError(f"{out} is not a prepared folder published by this version (expected a link to "
                          f"{root(out).name}/gen-*); choose another --out")
    return None


def _adopt_legacy(out: Path) -> None:
    """Turn a folder written before generations existed into the first generation (or drop an empty one)."""
    if out.is_symlink() or not out.is_dir():
        return
    if not any(out.iterdir()):
        out.rmdir()
        return
    if not any((out / m).is_file() for m in _MARKERS):
        return  # current() names the problem
    gen = root(out) / f"gen-{_new_id()}"
    for part in ("staged", "rejects"):
        old = out / "_state" / part
        if old.is_dir():
            (cache_dir(out) / part).mkdir(parents=True, exist_ok=True)
            for f in old.iterdir():
                os.replace(f, cache_dir(out) / part / f.name)
    gen.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out, gen)
    _link(out, gen)


def _new_id() -> str:
    """Sorts by creation time (microseconds), then a random suffix."""
    return f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:6]}"


def _link(out: Path, gen: Path) -> None:
    """Point `out` at `gen` in one rename (a relative link, so the parent folder can move)."""
    tmp = out.parent / f".{out.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(gen, out.parent), tmp)
    os.replace(tmp, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Build:
    """A generation being built: `path` to write into, `previous` generation (None on the first run)."""

    out: Path
    path: Path
    previous: Path | None
    published: bool = False

    def publish(self) -> Path:
        """Make this build the generation `out` points at; returns the published folder.

        Raises:
            SourceError: the build has no manifest (it was not validated to the end).
        """
        if not (self.path / MANIFEST).is_file():
            raise SourceError(f"{self.path} has no {MANIFEST}: an unfinished generation is never published")
        gen = self.path.parent / self.path.name.replace("build-", "gen-", 1)
        os.replace(self.path, gen)
        faults.point("generations.renamed")
        _link(self.out, gen)
        self.path, self.published = gen, True
        _prune(self.out)
        return gen


def _orphans(out: Path, published: Path | None) -> list[Path]:
    """Generations renamed into place but never linked (a crash between the two): every `gen-*` newer than
    the published one, since generations are published in the order they are built, one at a time."""
    return [g for g in root(out).glob("gen-*") if g != published and (published is None or g.name > published.name)]


def _prune(out: Path) -> None:
    keep = current(out)
    gens = sorted(root(out).glob("gen-*"), key=lambda p: p.name, reverse=True)
    for old in [g for g in gens if g != keep][KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building(out: Path) -> Iterator[Build]:
    """Lock `out`, yield a new build folder beside its generations; an unpublished build is removed on the
    way out (a failure's partial tables never keep their disk space).

    Raises:
        SourceError: another preparation holds the lock, or `out` is something else than a prepared folder.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = root(out)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SourceError(f"another preparation of {out} is running (lock {base / '.lock'})") from None
        _adopt_legacy(out)
        previous = current(out)
        for stale in base.glob("build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for orphan in _orphans(out, previous):
            shutil.rmtree(orphan, ignore_errors=True)
        build = Build(out, base / f"build-{_new_id()}", previous)
        build.path.mkdir()
        try:
            yield build
        finally:
            if not build.published:  # failed or unchanged: its space is freed now, not by the next run
                shutil.rmtree(build.path, ignore_errors=True)
