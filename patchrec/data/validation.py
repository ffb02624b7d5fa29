"""Great Expectations 1.x suites for the canonical tables, and a readable failure summary."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from patchrec.io import write_json

__all__ = ["DOCS_SITE", "TableResult", "ValidationFailed", "data_docs_index", "validate_tables"]

DOCS_SITE = "patchrec"  # the Data Docs site of a generation: <generation>/validation/data_docs/index.html

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """At least one expectation failed; the message lists expectation, column, count and examples."""


@dataclass
class TableResult:
    table: str
    success: bool
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)


def gx_expectations() -> Any:
    """The Great Expectations expectation classes (imported on first use: the import takes seconds)."""
    import great_expectations as gx

    return gx.expectations


def _suites(tables: dict[str, pd.DataFrame], max_time: dt.datetime) -> dict[str, list[Any]]:
    E = gx_expectations()
    inter, items, users = tables["interactions"], tables["items"], tables["users"]
    suites: dict[str, list[Any]] = {
        "interactions": [
            *(
                E.ExpectColumnValuesToNotBeNull(column=c)
                for c in ("user_idx", "item_idx", "user_key", "item_key", "ordinal")
            ),
            E.ExpectColumnValuesToBeInSet(column="item_idx", value_set=items["item_idx"].tolist()),
            E.ExpectColumnValuesToBeInSet(column="user_idx", value_set=users["user_idx"].tolist()),
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_idx", "ordinal"]),
        ],
        "items": [
            *(E.ExpectColumnValuesToNotBeNull(column=c) for c in ("item_idx", "item_key", "title")),
            E.ExpectColumnValuesToBeUnique(column="item_idx"),
            E.ExpectColumnValuesToBeUnique(column="item_key"),
            E.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
            E.ExpectColumnValuesToBeBetween(column="item_idx", min_value=0),
        ],
        "users": [
            *(E.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_idx", "user_key")),
            E.ExpectColumnValuesToBeUnique(column="user_idx"),
            E.ExpectColumnValuesToBeUnique(column="user_key"),
            E.ExpectColumnValuesToBeBetween(column="n_interactions", min_value=0),
        ],
    }
    if inter["event_time"].notna().any():
        suites["interactions"] += [
            E.ExpectColumnValuesToNotBeNull(column="event_time"),
            E.ExpectColumnValuesToBeBetween(
                column="event_time", min_value=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), max_value=max_time,
                strict_min=True,
            ),
        ]
    if inter["rating"].notna().any():
        suites["interactions"].append(E.ExpectColumnValuesToBeBetween(column="rating", min_value=-1e9, max_value=1e9))
    if "samples" in tables:
        suites["samples"] = [
            E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
            E.ExpectColumnValuesToBeBetween(column="position", min_value=1),
            E.ExpectColumnValuesToBeInSet(column="user_idx", value_set=users["user_idx"].tolist()),
        ]
    return suites


def _failure(res: Any) -> dict[str, Any]:
    cfg = res.expectation_config
    result = res.result or {}
    return {
        "expectation": cfg.type,
        "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list"),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_percent": result.get("unexpected_percent"),
        "examples": [str(v) for v in (result.get("partial_unexpected_list") or [])[:5]],
        "observed_value": str(result.get("observed_value")) if "observed_value" in result else None,
    }


def data_docs_index(folder: Path) -> Path:
    """The Great Expectations Data Docs (HTML) of a prepared generation: open it in a browser."""
    return Path(folder) / "validation" / "data_docs" / "index.html"


def validate_tables(folder: Path, max_future_days: float = 1.0, raise_on_failure: bool = True) -> list[TableResult]:
    """Validate the canonical tables in `folder`; full results go to `folder/validation/<table>.json` and the
    Data Docs (HTML: every suite and its validation) to `data_docs_index(folder)`.

    Raises:
        ValidationFailed: with a summary of every failed expectation, when `raise_on_failure`.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    folder = Path(folder)
    names = ["interactions", "items", "users"] + (["samples"] if (folder / "samples.parquet").exists() else [])
    tables = {n: pd.read_parquet(folder / f"{n}.parquet") for n in names}
    max_time = dt.datetime.now(dt.UTC) + dt.timedelta(days=max_future_days)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.add_data_docs_site(site_name=DOCS_SITE, site_config={
        "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str((folder / "validation" / "data_docs").resolve())}})
    source = context.data_sources.add_pandas("patchrec")
    results: list[TableResult] = []
    for name, expectations in _suites(tables, max_time).items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"patchrec-{name}"))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{name}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"check-{name}", validation_definitions=[vd], result_format="SUMMARY",
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=[DOCS_SITE])]))
        (res,) = checkpoint.run(batch_parameters={"dataframe": tables[name]}).run_results.values()
        write_json(res.to_json_dict(), folder / "validation" / f"{name}.json")
        failures = [_failure(r) for r in res.results if not r.success]
        results.append(TableResult(name, bool(res.success), len(res.results), failures))
    write_json([r.__dict__ for r in results], folder / "validation" / "summary.json")
    bad = [r for r in results if not r.success]
    if bad and raise_on_failure:
        lines = [f"validation failed for {folder} (full results in {folder / 'validation'}):"]
        for r in bad:
            for f in r.failures:
                lines.append(f"  {r.table}.{f['column']}: {f['expectation']} — {f['unexpected_count']} unexpected, "
                             f"e.g. {f['examples'] or f['observed_value']}")
        raise ValidationFailed("\n".join(lines))
    return results
