"""Ingestion: raw files -> staged Parquet (once per file) -> canonical tables + quarantine + report.

Layout of an output folder:
  interactions.parquet  items.parquet  users.parquet  quarantine.parquet  ingest.json
  _state/manifest.json            every ingested raw file: path, size, sha256, rows
  _state/staged/<sha>.parquet     each raw file parsed to text columns, written once
  _state/rejects/<sha>.parquet    lines the parser rejected, with line numbers and reasons
  _state/{user,item}_keys.parquet stable dense indices across nightly runs
Each table is written atomically (temp file, then rename); ingest.json is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from patchrec.config import DataConfig
from patchrec.data.formats import FileSpec, SourceError, format_traits, plan_files
from patchrec.io import atomic_path, file_digest, read_json, write_json, write_parquet
from patchrec.sql import connect, relation

__all__ = ["IngestError", "ManifestError", "IngestReport", "ingest", "TABLES"]

log = logging.getLogger(__name__)
TABLES = ("interactions", "items", "users", "quarantine")
_REJECT_SCHEMA = pa.schema([("source_file", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())])
_SCRATCH = "snappy"  # compression of staged and work files: written once, read a few times
_KEY_SCHEMA = pa.schema([("key", pa.string()), ("idx", pa.int32())])


class IngestError(RuntimeError):
    """Raw data that cannot be ingested; the message names the file and what is wrong."""


class ManifestError(IngestError):
    """A raw file changed after it was ingested (re-ingesting it would double count)."""


@dataclass
class IngestReport:
    """Counts of one ingestion; rows_read = accepted + quarantined + deduplicated + filtered."""

    format: str
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    rows_deduplicated: int = 0
    rows_filtered: int = 0
    rows_filtered_rating: int = 0
    rows_filtered_kcore: int = 0
    users: int = 0
    items: int = 0
    interactions: int = 0
    items_read: int = 0
    items_quarantined: int = 0
    changed: bool = True
    files_new: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    config_fingerprint: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprint(cfg: DataConfig) -> str:
    keys = ("format", "min_rating", "kcore", "max_line_bytes", "source")
    blob = json.dumps(cfg.model_dump(mode="json", include=set(keys)), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rel(spec: FileSpec, raw: Path) -> str:
    return spec.path.relative_to(raw).as_posix()


def _stage(spec: FileSpec, cfg: DataConfig, staged: Path, rejects: Path) -> tuple[int, int]:
    """Parse one raw file into `staged`; rejected lines into `rejects`. Returns (rows, rejected lines)."""
    if spec.path.stat().st_size == 0:
        raise SourceError(f"{spec.path}: file is empty")
    name = _rel(spec, Path(cfg.raw))
    params = dict(spec.params, path=str(spec.path), source_file=name)
    if spec.parse_rejects:
        params["max_line_bytes"] = cfg.max_line_bytes
    con = connect(cfg.memory_limit, temp_dir=staged.parent.parent / "spill")
    try:
        write_parquet(relation(con, spec.sql, **params), staged, _SCRATCH)
        if spec.parse_rejects:
            rej = relation(con, "stg_parse_rejects", source_file=name, max_line_bytes=cfg.max_line_bytes,
                           encoding=spec.encoding)
            write_parquet(rej, rejects)
        else:
            with atomic_path(rejects) as tmp:
                pq.write_table(_REJECT_SCHEMA.empty_table(), tmp)
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0]
        raise IngestError(f"cannot read {spec.path} as {cfg.format} ({spec.role}): {msg}") from exc
    finally:
        con.close()
    return pq.read_metadata(staged).num_rows, pq.read_metadata(rejects).num_rows


def _empty_keys(path: Path) -> None:
    if not path.exists():
        with atomic_path(path) as tmp:
            pq.write_table(_KEY_SCHEMA.empty_table(), tmp)


def ingest(cfg: DataConfig, progress: bool = False) -> IngestReport:
    """Ingest `cfg.raw` into `cfg.out`: new raw files are staged once, then the tables are rebuilt.

    Raises:
        SourceError: a missing folder or file, an empty file, a missing column.
        ManifestError: a raw file that changed since it was ingested (use `rebuild`).
        IngestError: an unreadable file (e.g. truncated gzip), or counts that do not add up.
    """
    t0 = time.perf_counter()
    raw, out = Path(cfg.raw), Path(cfg.out)
    state = out / "_state"
    if cfg.rebuild and state.exists():
        shutil.rmtree(state)
    specs = plan_files(cfg)
    manifest_path = state / "manifest.json"
    manifest: dict[str, dict[str, Any]] = read_json(manifest_path)["files"] if manifest_path.exists() else {}
    report = IngestReport(format=cfg.format, config_fingerprint=_fingerprint(cfg))

    current = {_rel(s, raw): s for s in specs}
    digests = {name: file_digest(s.path) for name, s in current.items()}
    changed = [n for n, (size, sha) in digests.items() if n in manifest and manifest[n]["sha256"] != sha]
    if changed:
        details = "; ".join(f"{n}: sha256 {manifest[n]['sha256'][:12]}… -> {digests[n][1][:12]}…" for n in changed)
        raise ManifestError(
            f"raw file(s) changed since they were ingested into {out}: {details}. "
            "Ingesting them again would double count; move new data to new files, or run with --rebuild."
        )
    new = [n for n in current if n not in manifest]
    report.files_new = new
    report.files_removed = sorted(n for n in manifest if n not in current)
    for name in report.files_removed:
        log.warning("raw file %s was ingested earlier and is gone; its %s rows are kept", name,
                    manifest[name]["rows"])

    previous = out / "ingest.json"
    if not new and previous.exists() and all((out / f"{t}.parquet").exists() for t in TABLES):
        old = read_json(previous)
        if old.get("config_fingerprint") == report.config_fingerprint:
            old.update(changed=False, files_new=[], files_removed=report.files_removed)
            return IngestReport(**old)

    for i, name in enumerate(new):
        spec = current[name]
        sha = digests[name][1]
        if progress:
            print(f"  staging [{i + 1}/{len(new)}] {name}", flush=True)
        rows, rejected = _stage(spec, cfg, state / "staged" / f"{sha}.parquet", state / "rejects" / f"{sha}.parquet")
        manifest[name] = {"role": spec.role, "size": digests[name][0], "sha256": sha, "rows": rows + rejected,
                          "rows_rejected": rejected, "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    _build(cfg, manifest, state, out, report)
    write_json({"files": manifest}, manifest_path)
    report.seconds = round(time.perf_counter() - t0, 3)
    write_json(report.to_dict(), previous)
    return report


def _build(cfg: DataConfig, manifest: dict[str, dict[str, Any]], state: Path, out: Path, report: IngestReport) -> None:
    """Rebuild the canonical tables from every staged file."""
    traits = format_traits(cfg)
    work = state / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def staged(role: str) -> list[str]:
        return [str(state / "staged" / f"{m['sha256']}.parquet") for m in manifest.values() if m["role"] == role]

    rejects = [str(state / "rejects" / f"{m['sha256']}.parquet") for m in manifest.values()]
    con = connect(cfg.memory_limit, temp_dir=state / "spill")
    try:
        catalog = write_parquet(relation(con, "int_catalog", staged=staged("items")), work / "catalog.parquet", _SCRATCH)
        interactions = staged("interactions")
        if keymaps := staged("item_map"):
            interactions = [
                str(write_parquet(relation(con, "int_remap_items", path=p, keymap=keymaps), work / f"mapped{i}.parquet", _SCRATCH))
                for i, p in enumerate(interactions)
            ]
        events = write_parquet(
            relation(con, "int_events", staged=interactions, catalog=str(catalog), numeric_ids=traits.numeric_ids,
                     has_time=traits.has_time, max_ts=time.time() + cfg.max_future_days * 86400.0,
                     min_rating=cfg.min_rating),
            work / "events.parquet", _SCRATCH,
        )
        ev = dict(relation(con, "report_status_counts", path=str(events)).fetchall())
        kept, n_kept = _kcore(con, events, ev.get("kept", 0), cfg.kcore, work)
        user_keys, item_keys = state / "user_keys.parquet", state / "item_keys.parquet"
        _empty_keys(user_keys)
        _empty_keys(item_keys)
        new_users = write_parquet(relation(con, "int_keys", previous=str(user_keys), keys_from=str(kept), key_col="user_key"),
                                  work / "user_keys.parquet")
        new_items = write_parquet(relation(con, "int_keys", previous=str(item_keys), keys_from=str(catalog), key_col="item_key"),
                                  work / "item_keys.parquet")
        shutil.move(new_users, user_keys)
        shutil.move(new_items, item_keys)

        write_parquet(relation(con, "mart_items", catalog=str(catalog), item_keys=str(item_keys)), out / "items.parquet")
        inter = write_parquet(relation(con, "mart_interactions", events=str(kept), user_keys=str(user_keys),
                                       item_keys=str(item_keys)), out / "interactions.parquet")
        write_parquet(relation(con, "mart_users", user_keys=str(user_keys), interactions=str(inter)), out / "users.parquet")
        write_parquet(relation(con, "mart_quarantine", parse_rejects=rejects, catalog=str(catalog), events=str(events)),
                      out / "quarantine.parquet")
        cat = dict(relation(con, "report_status_counts", path=str(catalog)).fetchall())
    finally:
        con.close()

    parse_rejected = {role: sum(m["rows_rejected"] for m in manifest.values() if m["role"] == role)
                      for role in ("interactions", "items")}
    report.rows_read = sum(m["rows"] for m in manifest.values() if m["role"] == "interactions")
    report.rows_quarantined = ev.get("quarantined", 0) + parse_rejected["interactions"]
    report.rows_deduplicated = ev.get("duplicate", 0)
    report.rows_filtered_rating = ev.get("filtered_rating", 0)
    report.rows_filtered_kcore = ev.get("kept", 0) - n_kept
    report.rows_filtered = report.rows_filtered_rating + report.rows_filtered_kcore
    report.interactions = report.rows_accepted = pq.read_metadata(out / "interactions.parquet").num_rows
    report.items = pq.read_metadata(out / "items.parquet").num_rows
    report.users = pq.read_metadata(out / "users.parquet").num_rows
    report.items_read = sum(m["rows"] for m in manifest.values() if m["role"] == "items")
    report.items_quarantined = cat.get("quarantined", 0) + parse_rejected["items"]
    accounted = report.rows_accepted + report.rows_quarantined + report.rows_deduplicated + report.rows_filtered
    if accounted != report.rows_read:
        raise IngestError(f"counts do not add up: read {report.rows_read}, accounted for {accounted} ({report.to_dict()})")
    if report.rows_read and report.interactions == 0:
        raise IngestError(f"no interaction survived ingestion of {cfg.raw}; see {out / 'quarantine.parquet'}")
    shutil.rmtree(work, ignore_errors=True)


def _kcore(con: duckdb.DuckDBPyConnection, events: Path, n_kept: int, k: int, work: Path) -> tuple[Path, int]:
    """Events file whose 'kept' rows survive iterative k-core filtering, and their count.

    With k = 0 this is `events` itself (downstream SQL reads only status = 'kept').
    """
    path, n, step = events, n_kept, 0
    while k > 0:
        step += 1
        path = write_parquet(relation(con, "int_kcore_step", path=str(path), k=k), work / f"kcore{step}.parquet", _SCRATCH)
        m = pq.read_metadata(path).num_rows
        if m == n:
            break
        n = m
    return path, n
