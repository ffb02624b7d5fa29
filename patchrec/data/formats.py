"""Source formats: which raw files a format reads, and the SQL (with parameters) that stages each.

Every reader stages to the same text schema, so the typed checks, quarantine, de-duplication and
indexing that follow are one code path for all formats:
interactions: user_key, item_key, ts_raw, ts_unit (s, ms, iso, none), rating_raw, given_split, stage_reason, source_file
items:        item_key, title, year, extra, stage_reason, source_file
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from patchrec.config import DataConfig, GenericSource, TableSource

__all__ = ["DATA_SUFFIXES", "FileSpec", "SourceError", "format_traits", "ignored_files", "plan_files"]

Role = Literal["interactions", "items", "item_map"]
_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
# what a data file is usually called: a file like this in the raw folder that the format does not read is named
DATA_SUFFIXES = (".csv", ".tsv", ".dat", ".data", ".txt", ".json", ".jsonl", ".parquet", ".inter", ".item", ".user",
                 ".item1", ".base", ".test")


class SourceError(ValueError):
    """A raw folder or file that cannot be read as the requested format; the message names it."""


@dataclass(frozen=True)
class FileSpec:
    """One raw file and how to stage it."""

    role: Role
    path: Path
    sql: str
    params: dict[str, Any] = field(default_factory=dict)
    parse_rejects: bool = True  # a text file read line by line: rejected lines recorded, physical lines counted
    encoding: str = "utf-8"
    header: bool = False
    quote: str = ""
    empty_reason: str | None = "empty line"  # None: the SQL reads empty lines as rows and judges them itself
    python_dicts: bool = False  # JSON lines that may be Python dict literals (2014 Amazon metadata): rewritten


@dataclass(frozen=True)
class Traits:
    numeric_ids: bool
    has_time: bool
    has_given_split: bool
    windows: bool = False  # rows are windows of a sequence (history -> next item), see `windows`


def format_traits(cfg: DataConfig) -> Traits:
    """Per-format facts the shared checks need."""
    if cfg.format == "patchrec-paper":
        return Traits(numeric_ids=True, has_time=False, has_given_split=True)
    if cfg.format == "recbole-benchmark":
        return Traits(numeric_ids=False, has_time=False, has_given_split=True, windows=True)
    if cfg.format in ("movielens-100k", "movielens-dat", "movielens-csv"):
        return Traits(numeric_ids=True, has_time=True, has_given_split=False)
    if cfg.format == "generic":
        assert cfg.source is not None
        return Traits(numeric_ids=cfg.source.numeric_ids, has_time=True, has_given_split=False)
    return Traits(numeric_ids=False, has_time=True, has_given_split=False)


def plan_files(cfg: DataConfig) -> list[FileSpec]:
    """Every raw file `cfg.format` reads from `cfg.raw`, in a deterministic order."""
    raw = Path(cfg.raw)
    if not raw.exists():
        raise SourceError(f"raw path {raw} does not exist")
    if not raw.is_dir():
        raise SourceError(f"raw path {raw} is not a folder")
    planner = {
        "movielens-100k": _movielens_100k,
        "movielens-dat": _movielens_dat,
        "movielens-csv": _movielens_csv,
        "amazon-json": _amazon_json,
        "recbole": _recbole,
        "recbole-benchmark": _recbole_benchmark,
        "patchrec-paper": _patchrec_paper,
        "generic": lambda r: _generic(r, cfg.source),
    }[cfg.format]
    specs = planner(raw)
    inside = raw.resolve()
    for spec in specs:
        if inside not in spec.path.resolve().parents:
            raise SourceError(f"{spec.path} resolves outside the raw folder {raw} ({spec.path.resolve()}: a link?); "
                              "copy the file into the folder instead")
    for role in ("interactions", "items"):
        if not any(s.role == role for s in specs):
            raise SourceError(f"{raw}: no {role} file found for format {cfg.format!r}")
    return specs


def ignored_files(raw: Path, specs: list[FileSpec], limit: int = 10_000) -> list[str]:
    """Files under `raw` that look like data (`DATA_SUFFIXES`, also gzipped) but that no spec reads."""
    raw = Path(raw)
    read = {s.path.resolve() for s in specs}
    out = []
    for i, path in enumerate(sorted(raw.rglob("*"))):
        if i >= limit:
            break
        name = path.name.lower().removesuffix(".gz")
        if path.is_file() and name.endswith(DATA_SUFFIXES) and path.resolve() not in read:
            out.append(path.relative_to(raw).as_posix())
    return out


def _need(raw: Path, name: str, what: str) -> Path:
    path = raw / name
    if not path.is_file():
        raise SourceError(f"{path} does not exist ({what} file of this format)")
    return path


def _first_line(path: Path, encoding: str) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        line = fh.readline(1 << 20)
    if not line:
        raise SourceError(f"{path}: file is empty")
    return line.decode(encoding, errors="replace").rstrip("\r\n")


def _sniff_encoding(path: Path) -> str:
    """utf-8 if the whole (small) file decodes as utf-8, else latin-1 (older MovieLens catalogs)."""
    try:
        path.read_bytes().decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _columns(path: Path, delimiter: str, header: bool, names: list[str] | None, encoding: str) -> list[str]:
    if names:
        return list(names)
    first = _first_line(path, encoding)
    fields = first.split(delimiter)
    if not header:
        return [f"column{i}" for i in range(len(fields))]
    cols: list[str] = []
    for raw_name in fields:
        name = raw_name.strip().strip('"') or f"column{len(cols)}"
        while name in cols:
            name += "_"
        cols.append(name)
    return cols


def _delimited(
    role: Role,
    path: Path,
    sql: str,
    *,
    delimiter: str,
    header: bool,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quote: str = "",
    **picks: Any,
) -> FileSpec:
    cols = _columns(path, delimiter, header, names, encoding)
    for key, col in picks.items():
        if key.endswith("_col") and col not in cols:
            raise SourceError(f"{path}: column {col!r} not found (columns: {cols})")
    params = {
        "delimiter": delimiter,
        "header": header,
        "columns": {c: "VARCHAR" for c in cols},
        "quote": quote,
        "encoding": encoding,
        **picks,
    }
    return FileSpec(role, path, sql, params, parse_rejects=True, encoding=encoding, header=header, quote=quote)


def _interactions(path: Path, user: str, item: str, time: str, rating: str | None, unit: str, **kw: Any) -> FileSpec:
    return _delimited(
        "interactions", path, "stg_delimited_interactions",
        user_col=user, item_col=item, time_col=time, time_unit=unit,
        has_rating=rating is not None, rating_col=rating or time, **kw,
    )


def _items(path: Path, id_: str, title: str, extra: str | None, strip_year: bool, **kw: Any) -> FileSpec:
    return _delimited(
        "items", path, "stg_delimited_items",
        id_col=id_, title_col=title, has_extra=extra is not None, extra_col=extra or title,
        strip_year=strip_year, **kw,
    )


def _movielens_100k(raw: Path) -> list[FileSpec]:
    names = ["user", "item", "rating", "ts"]
    item_names = ["id", "title", "release", "video_release", "url"] + [f"genre{i}" for i in range(19)]
    return [
        _interactions(_need(raw, "u.data", "ratings"), "user", "item", "ts", "rating", "s",
                      delimiter="\t", header=False, names=names),
        _items(_need(raw, "u.item", "movies"), "id", "title", None, True,
               delimiter="|", header=False, names=item_names, encoding="latin-1"),
    ]


def _movielens_dat(raw: Path) -> list[FileSpec]:
    movies = _need(raw, "movies.dat", "movies")
    return [
        _interactions(_need(raw, "ratings.dat", "ratings"), "user", "item", "ts", "rating", "s",
                      delimiter="::", header=False, names=["user", "item", "rating", "ts"]),
        _items(movies, "id", "title", "genres", True, delimiter="::", header=False,
               names=["id", "title", "genres"], encoding=_sniff_encoding(movies)),
    ]


def _movielens_csv(raw: Path) -> list[FileSpec]:
    return [
        _interactions(_need(raw, "ratings.csv", "ratings"), "userId", "movieId", "timestamp", "rating", "s",
                      delimiter=",", header=True, quote='"'),
        _items(_need(raw, "movies.csv", "movies"), "movieId", "title", "genres", True,
               delimiter=",", header=True, quote='"'),
    ]


def _amazon_json(raw: Path) -> list[FileSpec]:
    files = sorted(p for p in raw.iterdir() if p.is_file() and p.name.endswith(_JSON_SUFFIXES))
    specs = []
    for path in files:
        role: Role = "items" if path.name.startswith("meta") else "interactions"
        sql = "stg_json_items" if role == "items" else "stg_json_interactions"
        specs.append(FileSpec(role, path, sql, {"delimiter": "\x01"}, parse_rejects=True, empty_reason=None,
                              python_dicts=role == "items"))
    if not files:
        raise SourceError(f"{raw}: no JSON-lines files ({', '.join(_JSON_SUFFIXES)})")
    return specs


def _recbole(raw: Path) -> list[FileSpec]:
    inter = sorted(p for p in raw.glob("*.inter") if p.name.count(".") == 1)
    if not inter:
        bench = sorted(raw.glob("*.*.inter"))
        hint = f" (found {bench[0].name}: use --format recbole-benchmark for pre-split files)" if bench else ""
        raise SourceError(f"{raw}: no RecBole .inter file{hint}")
    specs = []
    for path in inter:
        fields = {f.split(":")[0]: f for f in _first_line(path, "utf-8").split("\t")}
        missing = [f for f in ("user_id", "item_id", "timestamp") if f not in fields]
        if missing:
            raise SourceError(f"{path}: header lacks field(s) {missing} (has {list(fields.values())})")
        specs.append(_interactions(path, fields["user_id"], fields["item_id"], fields["timestamp"],
                                   fields.get("rating"), "s", delimiter="\t", header=True))
    return specs + _recbole_items(raw)


def _recbole_items(raw: Path) -> list[FileSpec]:
    items = sorted(raw.glob("*.item"))
    if not items:
        raise SourceError(f"{raw}: no RecBole .item file (titles are required)")
    specs = []
    for path in items:
        fields = {f.split(":")[0]: f for f in _first_line(path, "utf-8").split("\t")}
        title = next((fields[k] for k in ("title", "movie_title", "book_title") if k in fields), None)
        if "item_id" not in fields or title is None:
            raise SourceError(f"{path}: header needs item_id and a title field (has {list(fields.values())})")
        specs.append(_items(path, fields["item_id"], title, None, False, delimiter="\t", header=True))
    return specs


def _recbole_benchmark(raw: Path) -> list[FileSpec]:
    """RecBole's pre-split files, in split order: <name>.train.inter, .valid.inter, .test.inter."""
    specs = []
    for split, suffix in (("train", "train"), ("val", "valid"), ("test", "test")):
        found = sorted(raw.glob(f"*.{suffix}.inter"))
        if len(found) != 1:
            raise SourceError(f"{raw}: expected one *.{suffix}.inter file, found {[p.name for p in found]}")
        path = found[0]
        cols = _columns(path, "\t", True, None, "utf-8")
        fields = {c.split(":")[0]: c for c in cols}
        missing = [f for f in ("user_id", "item_id_list", "item_id") if f not in fields]
        if missing:
            raise SourceError(f"{path}: header lacks field(s) {missing} (has {cols})")
        specs.append(FileSpec("interactions", path, "stg_recbole_benchmark", {
            "columns": {c: "VARCHAR" for c in cols}, "user_col": fields["user_id"], "item_col": fields["item_id"],
            "history_col": fields["item_id_list"], "split": split}, header=True))
    return specs + _recbole_items(raw)


def _patchrec_paper(raw: Path) -> list[FileSpec]:
    return [
        FileSpec("interactions", _need(raw, "sequences.parquet", "sequences"), "stg_paper_interactions", {}, False),
        FileSpec("items", _need(raw, "items.parquet", "items"), "stg_paper_items", {}, False),
    ]


def _glob(raw: Path, table: TableSource, what: str) -> list[Path]:
    paths: list[Path] = []
    inside = raw.resolve()
    for pattern in table.path:
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise SourceError(f"{what} path {pattern!r} leaves the raw folder {raw}: use a pattern relative to it")
        found = sorted(p for p in raw.glob(pattern) if p.is_file())
        outside = [p for p in found if inside not in p.resolve().parents]
        if outside:
            raise SourceError(f"{what} file {outside[0]} resolves outside the raw folder {raw} (a link?)")
        if not found:
            raise SourceError(f"{raw / pattern}: no {what} file matches")
        paths += [p for p in found if p not in paths]
    return paths


def _generic(raw: Path, src: GenericSource | None) -> list[FileSpec]:
    assert src is not None
    specs: list[FileSpec] = []
    it = src.interactions
    for path in _glob(raw, it, "interactions"):
        if path.suffix == ".parquet":
            specs.append(FileSpec("interactions", path, "stg_parquet_interactions", {
                "user_col": it.user, "item_col": it.item, "time_col": it.time, "time_unit": it.time_unit,
                "has_rating": it.rating is not None, "rating_col": it.rating or it.time}, parse_rejects=False))
        else:
            specs.append(_interactions(path, it.user, it.item, it.time, it.rating, it.time_unit,
                                       delimiter=it.delimiter, header=it.header, names=it.names,
                                       encoding=it.encoding, quote='"' if it.delimiter == "," else ""))
    im = src.items
    for path in _glob(raw, im, "items"):
        if path.suffix == ".parquet":
            specs.append(FileSpec("items", path, "stg_parquet_items", {
                "id_col": im.id, "title_col": im.title, "has_extra": im.extra is not None,
                "extra_col": im.extra or im.title}, parse_rejects=False))
        else:
            specs.append(_items(path, im.id, im.title, im.extra, False, delimiter=im.delimiter, header=im.header,
                                names=im.names, encoding=im.encoding, quote='"' if im.delimiter == "," else ""))
    if src.item_map is not None:
        km = src.item_map
        for path in _glob(raw, km, "item map"):
            specs.append(_delimited("item_map", path, "stg_delimited_keymap", delimiter=km.delimiter,
                                    header=km.header, names=km.names, encoding=km.encoding,
                                    source_col=km.source, target_col=km.target))
    return specs
