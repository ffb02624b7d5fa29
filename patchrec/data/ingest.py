"""Ingestion: raw files -> staged Parquet (once per file) -> canonical tables + quarantine + report.

Layout of a generation folder (see `generations`):
  interactions.parquet  items.parquet  users.parquet  quarantine.parquet  ingest.json
  _state/manifest.json            every ingested raw file: path, size, sha256, data lines, rows
  _state/{user,item}_keys.parquet stable dense indices across nightly runs
and of the cache shared by generations:
  staged/<sha>.parquet            each raw file parsed to text columns, written once
  rejects/<sha>.parquet           lines rejected before or by the parser, with line numbers and reasons
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from patchrec.config import DataConfig
from patchrec.data.formats import FileSpec, SourceError, format_traits, ignored_files, plan_files
from patchrec.data.generations import cache_dir
from patchrec.data.lines import LineScan, original_line, scan_lines, without_lines
from patchrec.io import atomic_path, file_digest, read_json, write_json, write_parquet
from patchrec.sql import connect, relation

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TABLES", "IngestError", "IngestReport", "RawFileChangedError", "ingest"]

log = logging.getLogger(__name__)
TABLES = ("interactions", "items", "users", "quarantine")
_SCRATCH = "snappy"  # compression of staged and work files: written once, read a few times
# DuckDB splits its work into CSV buffers of 32 MB and Parquet row groups of 122,880 rows: on less input than that a
# second thread only waits (ml-100k: 0.33 -> 0.30 s, docs/benchmarks.md)
_ONE_THREAD_BYTES = 32 * 2**20
_DELIMITER_NAMES = {"\t": "tab", ",": "comma", "|": "'|'", "::": "'::'", ";": "semicolon", "\x01": "record separator"}


class IngestError(RuntimeError):
    """Raw data that cannot be ingested; the message names the file and what is wrong."""


class RawFileChangedError(IngestError):
    """A raw file changed after it was ingested (re-ingesting it would double count)."""


@dataclass
class IngestReport:
    """Counts of one ingestion; rows_read = accepted + quarantined + deduplicated + filtered.

    lines_read counts the physical data lines of the interaction files; it equals rows_read except for
    window formats (recbole-benchmark), whose rows are the interactions the windows describe.
    """

    format: str
    rows_read: int = 0
    lines_read: int = 0
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
    files_ignored: list[str] = field(default_factory=list)  # look like data, not read by this format
    config_fingerprint: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprint(cfg: DataConfig) -> str:
    """Hash of every setting that changes a prepared generation (not where it is read from or written to)."""
    blob = json.dumps(cfg.model_dump(mode="json", exclude={"raw", "out", "rebuild", "memory_limit"}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rel(spec: FileSpec, raw: Path) -> str:
    return spec.path.relative_to(raw).as_posix()


def _stage(con: duckdb.DuckDBPyConnection, spec: FileSpec, cfg: DataConfig, cache: Path, sha: str,
           work: Path) -> dict[str, int]:
    """Parse one raw file into `cache/staged/<sha>.parquet`, its rejected lines into `cache/rejects/<sha>.parquet`.

    Returns:
        {"rows": staged rows + rejected lines, "lines": physical data lines (text files), "rows_rejected": ...}.
    """
    staged, rejects = cache / "staged" / f"{sha}.parquet", cache / "rejects" / f"{sha}.parquet"
    if spec.path.stat().st_size == 0:
        raise SourceError(f"{spec.path}: file is empty")
    name = _rel(spec, Path(cfg.raw))
    scan = None
    source = spec.path
    if spec.parse_rejects:
        try:
            scan = scan_lines(spec.path, header=spec.header, quote=spec.quote, encoding=spec.encoding,
                              empty_reason=spec.empty_reason, python_dicts=spec.python_dicts)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise IngestError(f"cannot read {spec.path} as {cfg.format} ({spec.role}): {exc}") from exc
        if scan.data_lines == 0:
            raise SourceError(f"{spec.path}: no data lines{' after the header' if spec.header else ''}")
        latin1 = spec.encoding == "latin-1"
        if scan.dropped or latin1 or scan.literal_lines:
            source = without_lines(spec.path, scan.dropped, work / f"{sha}.cleaned", spec.encoding, to_utf8=latin1,
                                   python_dicts=scan.literal_lines > 0, max_line_bytes=cfg.max_line_bytes)
    params = dict(spec.params, path=str(source), source_file=name)
    if source != spec.path and spec.encoding == "latin-1":
        params["encoding"] = "utf-8"  # the copy was re-encoded
    if spec.parse_rejects:
        params["max_line_bytes"] = cfg.max_line_bytes
    cur = con.cursor()  # a connection of its own (DuckDB's reject tables are per connection), the same database
    try:
        write_parquet(relation(cur, spec.sql, **params), staged, _SCRATCH)
        parsed = (
            relation(
                cur, "stg_parse_rejects", source_file=name, max_line_bytes=cfg.max_line_bytes, encoding=spec.encoding,
                delimiter=str(spec.params.get("delimiter", "")),
                delimiter_name=_DELIMITER_NAMES.get(str(spec.params.get("delimiter", "")),
                                                    repr(spec.params.get("delimiter", ""))),
            )
            if spec.parse_rejects
            else relation(cur, "stg_no_rejects")
        )
        if scan is None or not (scan.rejects or scan.dropped):  # the parser's line numbers are the file's
            write_parquet(parsed, rejects)  # (no pyarrow: importing it takes 0.07 s, a pyarrow table imports pandas)
            n_rejected = _rows(cur, rejects)
        else:
            import pyarrow.parquet as pq

            table = _rejects(parsed.to_arrow_table(), scan, name)
            with atomic_path(rejects) as tmp:
                pq.write_table(table, tmp)
            n_rejected = table.num_rows
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0]
        raise IngestError(f"cannot read {spec.path} as {cfg.format} ({spec.role}): {msg}") from exc
    finally:
        cur.close()
    rows = _rows(con, staged) + n_rejected
    if scan is not None and rows != scan.data_lines:
        raise IngestError(f"{spec.path}: the parser accounted for {rows} of its {scan.data_lines} data lines "
                          f"(staged {rows - n_rejected}, rejected {n_rejected}); refusing to lose rows")
    return {"rows": rows, "lines": scan.data_lines if scan else rows, "rows_rejected": n_rejected}


def _rejects(parsed: pa.Table, scan: LineScan, name: str) -> pa.Table:
    """The parser's rejected lines (renumbered to the original file) plus the lines rejected by the scan."""
    import pyarrow as pa

    schema = pa.schema(
        [("source_file", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string())]
    )
    parsed = parsed.select(schema.names).cast(schema)
    lines = [original_line(n, scan.dropped) for n in parsed.column("line").to_pylist()]
    parsed = parsed.set_column(1, "line", pa.array(lines, pa.int64()))
    early = pa.table({"source_file": [name] * len(scan.rejects), "line": [r[0] for r in scan.rejects],
                      "reason": [r[1] for r in scan.rejects], "raw": [r[2] for r in scan.rejects]},
                     schema=schema)
    return pa.concat_tables([parsed, early]).sort_by("line")


def ingest(cfg: DataConfig, folder: Path, previous: Path | None, progress: bool = False) -> IngestReport:
    """Ingest `cfg.raw` into the new generation `folder`, starting from the `previous` generation's state.

    New raw files are parsed once into the shared cache; the tables are rebuilt from every staged file.
    When no raw file is new and the settings are those of `previous`, nothing is built and the report
    says `changed=False`.

    Raises:
        SourceError: a missing folder or file, an empty file, a missing column.
        RawFileChangedError: a raw file that changed since it was ingested (use `rebuild`).
        IngestError: an unreadable file (e.g. truncated gzip), or counts that do not add up.
    """
    t0 = time.perf_counter()
    raw, folder = Path(cfg.raw), Path(folder)
    cache = cache_dir(cfg.out)
    old_state = None if (cfg.rebuild or previous is None) else previous / "_state"
    specs = plan_files(cfg)
    ignored = ignored_files(raw, specs)
    if ignored:
        log.warning("%s: %d file(s) look like data but are not read as %s: %s", raw, len(ignored), cfg.format,
                    ", ".join(ignored[:20]) + (" ..." if len(ignored) > 20 else ""))
    manifest: dict[str, dict[str, Any]] = (read_json(old_state / "manifest.json")["files"]
                                           if old_state and (old_state / "manifest.json").exists() else {})
    report = IngestReport(format=cfg.format, config_fingerprint=_fingerprint(cfg), files_ignored=ignored)

    current = {_rel(s, raw): s for s in specs}
    digests = {name: file_digest(s.path) for name, s in current.items()}
    changed = [n for n, (size, sha) in digests.items() if n in manifest and manifest[n]["sha256"] != sha]
    if changed:
        details = "; ".join(f"{n}: sha256 {manifest[n]['sha256'][:12]}… -> {digests[n][1][:12]}…" for n in changed)
        raise RawFileChangedError(
            f"raw file(s) changed since they were ingested into {cfg.out}: {details}. "
            "Ingesting them again would double count; move new data to new files, or run with --rebuild."
        )
    new = [n for n in current if n not in manifest]
    report.files_new = new
    report.files_removed = sorted(n for n in manifest if n not in current)
    for name in report.files_removed:
        log.warning("raw file %s was ingested earlier and is gone; its %s rows are kept", name,
                    manifest[name]["rows"])
        if not (cache / "staged" / f"{manifest[name]['sha256']}.parquet").exists():
            raise IngestError(f"raw file {name} is gone and its staged copy in {cache} too: run with --rebuild")

    if not new and previous is not None and old_state is not None:
        old = read_json(previous / "ingest.json")
        if old.get("config_fingerprint") == report.config_fingerprint:
            old.update(changed=False, files_new=[], files_removed=report.files_removed, files_ignored=ignored)
            return IngestReport(**old)

    work = folder / "_state" / "work"
    work.mkdir(parents=True, exist_ok=True)
    restage = [n for n in current if n in manifest and not (cache / "staged" / f"{digests[n][1]}.parquet").exists()]
    todo = new + restage + [n for n in current if cfg.rebuild and n not in new]
    small = sum(size for size, _ in digests.values()) < _ONE_THREAD_BYTES
    con = connect(cfg.memory_limit, threads=1 if small else None, temp_dir=cache / "spill")  # one: opening takes 12 ms
    try:
        for i, name in enumerate(todo):
            spec = current[name]
            sha = digests[name][1]
            if progress:
                print(f"  staging [{i + 1}/{len(todo)}] {name}", flush=True)
            counts = _stage(con, spec, cfg, cache, sha, work)
            manifest[name] = {"role": spec.role, "size": digests[name][0], "sha256": sha, **counts,
                              "ingested_at": manifest.get(name, {}).get("ingested_at")
                              or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

        if old_state is not None:
            for keys in ("user_keys.parquet", "item_keys.parquet"):
                if (old_state / keys).exists():
                    shutil.copyfile(old_state / keys, folder / "_state" / keys)
        _build(con, cfg, manifest, cache, folder, report)
    finally:
        con.close()
    write_json({"files": manifest}, folder / "_state" / "manifest.json")
    report.seconds = round(time.perf_counter() - t0, 3)
    write_json(report.to_dict(), folder / "ingest.json")
    return report


def _build(con: duckdb.DuckDBPyConnection, cfg: DataConfig, manifest: dict[str, dict[str, Any]], cache: Path, out: Path,
           report: IngestReport) -> None:
    """Rebuild the canonical tables in `out` from every staged file."""
    traits = format_traits(cfg)
    state = out / "_state"
    work = state / "work"
    work.mkdir(parents=True, exist_ok=True)

    def staged(role: str) -> list[str]:
        return [str(cache / "staged" / f"{m['sha256']}.parquet") for m in manifest.values() if m["role"] == role]

    rejects = [str(cache / "rejects" / f"{m['sha256']}.parquet") for m in manifest.values()]
    catalog = write_parquet(
        relation(con, "int_catalog", staged=staged("items")), work / "catalog.parquet", _SCRATCH
    )
    interactions = staged("interactions")
    if traits.windows:
        from patchrec.data.windows import rebuild_windows  # pyarrow: imported only for window formats

        interactions = [str(rebuild_windows([Path(p) for p in interactions], work / "windows.parquet"))]
    if keymaps := staged("item_map"):
        interactions = [
            str(
                write_parquet(
                    relation(con, "int_remap_items", path=p, keymap=keymaps), work / f"mapped{i}.parquet", _SCRATCH
                )
            )
            for i, p in enumerate(interactions)
        ]
    events = write_parquet(
        relation(con, "int_events", staged=interactions, catalog=str(catalog), numeric_ids=traits.numeric_ids,
                 has_time=traits.has_time, min_ts=_min_ts(cfg), max_ts=time.time() + cfg.max_future_days * 86400.0,
                 min_rating=cfg.min_rating, max_abs_rating=cfg.max_abs_rating),
        work / "events.parquet", _SCRATCH,
    )
    ev = dict(relation(con, "report_status_counts", path=str(events)).fetchall())
    kept, n_kept = _kcore(con, events, ev.get("kept", 0), cfg.kcore, work)
    user_keys, item_keys = state / "user_keys.parquet", state / "item_keys.parquet"
    for keys in (user_keys, item_keys):
        if not keys.exists():  # the first run: no earlier keys
            write_parquet(relation(con, "int_keys_empty"), keys)
    new_users = write_parquet(
        relation(con, "int_keys", previous=str(user_keys), keys_from=str(kept), key_col="user_key"),
        work / "user_keys.parquet",
    )
    new_items = write_parquet(
        relation(con, "int_keys", previous=str(item_keys), keys_from=str(catalog), key_col="item_key"),
        work / "item_keys.parquet",
    )
    shutil.move(new_users, user_keys)
    shutil.move(new_items, item_keys)

    write_parquet(
        relation(con, "mart_items", catalog=str(catalog), item_keys=str(item_keys)), out / "items.parquet"
    )
    inter = write_parquet(relation(con, "mart_interactions", events=str(kept), user_keys=str(user_keys),
                                   item_keys=str(item_keys)), out / "interactions.parquet")
    write_parquet(
        relation(con, "mart_users", user_keys=str(user_keys), interactions=str(inter)), out / "users.parquet"
    )
    write_parquet(relation(con, "mart_quarantine", parse_rejects=rejects, catalog=str(catalog), events=str(events)),
                  out / "quarantine.parquet")
    cat = dict(relation(con, "report_status_counts", path=str(catalog)).fetchall())

    parse_rejected = {role: sum(m["rows_rejected"] for m in manifest.values() if m["role"] == role)
                      for role in ("interactions", "items")}
    report.lines_read = sum(m.get("lines", m["rows"]) for m in manifest.values() if m["role"] == "interactions")
    report.rows_read = sum(ev.values()) + parse_rejected["interactions"]
    report.rows_quarantined = ev.get("quarantined", 0) + parse_rejected["interactions"]
    report.rows_deduplicated = ev.get("duplicate", 0)
    report.rows_filtered_rating = ev.get("filtered_rating", 0)
    report.rows_filtered_kcore = ev.get("kept", 0) - n_kept
    report.rows_filtered = report.rows_filtered_rating + report.rows_filtered_kcore
    report.interactions = report.rows_accepted = _rows(con, out / "interactions.parquet")
    report.items = _rows(con, out / "items.parquet")
    report.users = _rows(con, out / "users.parquet")
    report.items_read = sum(m["rows"] for m in manifest.values() if m["role"] == "items")
    report.items_quarantined = cat.get("quarantined", 0) + parse_rejected["items"]
    accounted = report.rows_accepted + report.rows_quarantined + report.rows_deduplicated + report.rows_filtered
    if accounted != report.rows_read:
        raise IngestError(
            f"counts do not add up: read {report.rows_read}, accounted for {accounted} ({report.to_dict()})"
        )
    if not traits.windows and report.rows_read != report.lines_read:
        raise IngestError(f"counts do not add up: {report.lines_read} data lines read, {report.rows_read} rows checked")
    if report.rows_read and report.interactions == 0:
        why = {"quarantined (see quarantine.parquet)": report.rows_quarantined,
               "duplicates": report.rows_deduplicated,
               f"below min_rating={cfg.min_rating}": report.rows_filtered_rating,
               f"removed by the {cfg.kcore}-core filter": report.rows_filtered_kcore}
        raise IngestError(f"no interaction survived ingestion of {cfg.raw}: of {report.rows_read} rows read, "
                          + ", ".join(f"{n} {what}" for what, n in why.items() if n))
    shutil.rmtree(work, ignore_errors=True)


def _min_ts(cfg: DataConfig) -> float:
    """Earliest accepted event time (epoch seconds): the configured bound, else 1995-01-01 for the built-in
    formats and 1970-01-01 (exclusive) for a generic source."""
    bound = cfg.min_time or (None if cfg.format == "generic" else dt.date(1995, 1, 1))
    return 0.0 if bound is None else dt.datetime.combine(bound, dt.time(), tzinfo=dt.UTC).timestamp()


def _kcore(con: duckdb.DuckDBPyConnection, events: Path, n_kept: int, k: int, work: Path) -> tuple[Path, int]:
    """Events file whose 'kept' rows survive iterative k-core filtering, and their count.

    With k = 0 this is `events` itself (downstream SQL reads only status = 'kept').
    """
    path, n, step = events, n_kept, 0
    while k > 0:
        step += 1
        path = write_parquet(
            relation(con, "int_kcore_step", path=str(path), k=k), work / f"kcore{step}.parquet", _SCRATCH
        )
        m = _rows(con, path)
        if m == n:
            break
        n = m
    return path, n


def _rows(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The number of rows of a Parquet file, from its footer."""
    return int(relation(con, "report_row_count", path=str(path)).fetchall()[0][0])
