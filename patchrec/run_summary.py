"""What one pipeline run did, for people: a markdown summary and a metrics table (published as Prefect
artifacts by the flows, so the flow run's page in the Prefect UI says what was trained, how it scored and
what the registry decided).

The summary holds: the data (rows read, accepted, quarantined and why they are counted, the splits, the
validation verdicts and the Data Docs), each stage reused or run, the test metrics beside popularity's and
SASRec's on the same targets, the registered version, the promotion decision and its reason, and links to the
MLflow run and model version.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from patchrec.data.validation import data_docs_index
from patchrec.io import read_json

__all__ = ["MLFLOW_UI_ENV", "artifact_key", "metrics_rows", "pipeline_markdown", "skipped_markdown"]

MLFLOW_UI_ENV = "PATCHREC_MLFLOW_UI"  # the MLflow UI the links point to (default: `make mlflow-ui`'s address)
_DEFAULT_UI = "http://127.0.0.1:5000"
_METRICS = ("hr_1", "hr_5", "hr_10", "ndcg_10", "hr_20", "ndcg_20")
_BASELINES = ("popularity", "sasrec")


def artifact_key(flow: str, profile: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes): one key per flow and profile, so each run
    adds a version of the same artifact."""
    return re.sub(r"[^a-z0-9-]+", "-", f"patchrec-{flow}-{profile}".lower()).strip("-")


def skipped_markdown(flow: str, profile: str, reason: str) -> str:
    """The summary of a run that trained nothing (a nightly run without new data)."""
    return f"# patchrec {flow}: {profile}\n\nNothing trained: {reason}\n"


def _ui() -> str:
    return (os.environ.get(MLFLOW_UI_ENV) or _DEFAULT_UI).rstrip("/")


def metrics_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model (this model, then each baseline measured), one column per test metric, plus the
    validation NDCG@10 the promotion used."""
    m = result["metrics"]
    rows = [{"model": f"{result['registry'].get('name', 'model')} (this run)",
             **{k: _round(m.get(f"test_{k}")) for k in _METRICS}, "val_ndcg_10": _round(m.get("val_ndcg_10"))}]
    for kind in _BASELINES:
        if any(f"{kind}_test_{k}" in m for k in _METRICS):
            rows.append({"model": kind, **{k: _round(m.get(f"{kind}_test_{k}")) for k in _METRICS},
                         "val_ndcg_10": None})
    return rows


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 4)


def _data_section(data_dir: Path) -> list[str]:
    prep = data_dir / "prepare.json"
    if not prep.is_file():
        return [f"Data: `{data_dir}` (no prepare.json)"]
    s = read_json(prep)
    lines = [
        f"**Data** `{data_dir}` ({s.get('format')}, protocol {s.get('protocol')}; "
        f"{'a new generation' if s.get('changed') else 'unchanged, reused'})",
        "",
        "| rows read | accepted | quarantined | duplicates | filtered | users | items | items quarantined |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['rows_read']:,} | {s['rows_accepted']:,} | {s['rows_quarantined']:,} | {s['rows_deduplicated']:,} "
        f"| {s['rows_filtered']:,} | {s['users']:,} | {s['items']:,} | {s.get('items_quarantined', 0):,} |",
        "",
        "Samples: " + ", ".join(f"{k} {v:,}" for k, v in s.get("samples", {}).items())
        + ". Validation (Great Expectations): "
        + ", ".join(f"{t} {'passed' if ok else 'FAILED'}" for t, ok in s.get("validation", {}).items()) + ".",
    ]
    docs = data_docs_index(data_dir)
    if docs.is_file():
        lines.append(f"Data Docs: [{docs}]({docs.as_uri()})")
    if s.get("rows_quarantined") or s.get("items_quarantined"):
        lines.append(f"Quarantined rows, each with its file, line and reason: `{data_dir / 'quarantine.parquet'}`")
    return lines


def pipeline_markdown(result: dict[str, Any], flow: str, mlflow_run: str | None = None,
                      experiment_id: str | None = None) -> str:
    """The markdown summary of a finished `full-pipeline` / `nightly-retrain` run (`result`: the flow's result)."""
    reg, m = result["registry"], result["metrics"]
    ui = _ui()
    out = [f"# patchrec {flow}: {result['profile']} on {result['dataset']}", ""]
    out += _data_section(Path(result["data_dir"])) + [""]
    out += ["**Stages**", "", "| stage | this run |", "|---|---|"]
    out += [f"| {stage} | {'reused (same fingerprint)' if reused else 'ran'} |"
            for stage, reused in result.get("reused", {}).items()]
    out += ["", "**Test metrics** (same test targets for every row)", "", _table(metrics_rows(result)), ""]
    if "popularity_test_hr_20" in m and m["popularity_test_hr_20"] > 0:
        out.append(f"HR@20 = {m['test_hr_20'] / m['popularity_test_hr_20']:.2f}x popularity's.")
    name, version = reg.get("name"), reg.get("version")
    verdict = "promoted to `champion`" if reg.get("promoted") else "not promoted"
    out += ["", f"**Registry**: `{name}` version {version} — {verdict}: {reg.get('reason', '')}"]
    links = []
    if mlflow_run and experiment_id:
        links.append(f"[MLflow run]({ui}/#/experiments/{experiment_id}/runs/{mlflow_run})")
    if name and version:
        links.append(f"[model version]({ui}/#/models/{name}/versions/{version})")
    if links:
        out += ["", " · ".join(links) + f" (MLflow UI at {ui}: `make mlflow-ui`)"]
    return "\n".join(out) + "\n"


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)
    body = ["| " + " | ".join("–" if r[c] is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]))
                              for c in cols) + " |" for r in rows]
    return "\n".join([head, *body])
