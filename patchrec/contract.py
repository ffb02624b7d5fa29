"""The stage contract: typed stage records, one manifest per output folder, one reuse mechanism.

Every stage (prepare, baselines, catalog, pre-training, fine-tuning, evaluation, registration) writes its
outputs into one folder and then, last and atomically, `manifest.json`: the stage name, the fingerprint of
every input that changes the output, small metrics and facts, and the configs it ran with. A folder is
finished exactly when its manifest exists; `run_stage` is the only code that decides whether a stage runs
or is reused, and it opens the stage's MLflow run. One writer at a time per folder: a second process asking
for the same stage waits on the folder's lock file, then reuses what the first one finished. Checkpoints
inside a folder are not stages: each is a temp folder renamed into place, so a `step_N` folder is complete
by construction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from patchrec.io import file_digest, file_lock, read_json, write_json

__all__ = [
    "DATA_FILES",
    "MANIFEST",
    "Manifest",
    "ManifestError",
    "StageOutput",
    "StageRecord",
    "Tracker",
    "data_fingerprint",
    "fingerprint",
    "finished",
    "read_manifest",
    "run_stage",
    "write_manifest",
]

MANIFEST = "manifest.json"
DATA_FILES = ("items.parquet", "sequences.parquet", "samples.parquet")  # what training and ranking read
_SCHEMA = 1


class ManifestError(ValueError):
    """A folder whose manifest is missing, unreadable or from another stage or input."""


class StageOutput(BaseModel):
    """What a stage's build function reports; `run_stage` turns it into the manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metrics: dict[str, float] = Field(default_factory=dict, description="numbers worth a chart (MLflow metrics)")
    info: dict[str, Any] = Field(default_factory=dict, description="small JSON facts: counts, versions, reasons")

    @field_validator("metrics")
    @classmethod
    def _finite(cls, metrics: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:  # JSON has no NaN: a manifest that holds one could never be read back
            raise ValueError(f"metrics {bad} are not finite; a stage never finishes with a NaN or infinite metric")
        return metrics


class Manifest(StageOutput):
    """`manifest.json` of a finished stage folder (written once, last)."""

    schema_version: int = _SCHEMA
    stage: str
    fingerprint: str
    config: dict[str, Any] = Field(default_factory=dict, description="the configs the stage ran with")
    finished_at: str


class StageRecord(BaseModel):
    """What stages hand each other and the flows: a finished folder and what identifies it (never a model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stage: str
    dir: Path
    fingerprint: str
    reused: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, folder: Path, manifest: Manifest, reused: bool) -> StageRecord:
        return cls(stage=manifest.stage, dir=Path(folder), fingerprint=manifest.fingerprint, reused=reused,
                   metrics=manifest.metrics, info=manifest.info)


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (configs, upstream fingerprints, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def data_fingerprint(data_dir: Path) -> str:
    """Content hash of the prepared tables that training and ranking read."""
    return fingerprint([file_digest(Path(data_dir) / f)[1] for f in DATA_FILES])


def read_manifest(folder: Path, stage: str | None = None) -> Manifest:
    """The typed manifest of a finished folder.

    Args:
        folder: a stage output folder.
        stage: when given, the manifest must be this stage's.

    Raises:
        ManifestError: the folder is unfinished, or its manifest is unreadable or another stage's.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder} is not a finished stage folder (no {MANIFEST})")
    try:
        manifest = Manifest.model_validate(read_json(path))
    except (ValueError, ValidationError) as exc:
        raise ManifestError(f"{path} is not a patchrec manifest: {str(exc).splitlines()[0]}") from exc
    if stage is not None and manifest.stage != stage:
        raise ManifestError(f"{folder} holds a {manifest.stage!r} stage, not {stage!r}")
    return manifest


def finished(folder: Path, fp: str) -> Manifest | None:
    """The manifest when `folder` finished with fingerprint `fp`; None when it is unfinished.

    Raises:
        ManifestError: the folder finished for other inputs (a folder is never silently overwritten).
    """
    if not (Path(folder) / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    if manifest.fingerprint != fp:
        raise ManifestError(f"{folder} already holds a finished {manifest.stage!r} stage for other inputs "
                            f"(fingerprint {manifest.fingerprint}, expected {fp}); choose another folder")
    return manifest


@dataclass(frozen=True)
class Tracker:
    """Where a stage's MLflow run goes: the state folder's tracking store, an experiment, a parent run."""

    state_dir: Path
    experiment: str
    parent_run: str | None = None

    def run(self, name: str, tags: dict[str, str]) -> AbstractContextManager[Any]:
        from patchrec import tracking

        return tracking.stage_run(self.state_dir, self.experiment, name, self.parent_run, tags=tags)


def run_stage(stage: str, folder: Path, fp: str, build: Callable[[Path], StageOutput], *,
              config: dict[str, Any] | None = None, tracker: Tracker | None = None, run_name: str | None = None,
              log: Callable[[StageRecord], None] | None = None) -> StageRecord:
    """Run a stage into `folder` unless it already finished with fingerprint `fp`; then log it to MLflow.

    Args:
        stage: the stage's name, recorded in the manifest.
        folder: its output folder (usually named by `fp`); `build` may resume from what an interrupted run left.
        fp: the fingerprint of every input that changes the output.
        build: writes the outputs into `folder` and reports metrics and facts; it never writes the manifest.
        config: the configs the stage runs with, recorded in the manifest for its readers.
        tracker: when given, the stage runs inside one MLflow run named `run_name` (default `stage`), reused
            or not; the run is marked FAILED when `build` raises.
        log: logs stage-specific params, metrics and artifacts inside that MLflow run.

    Returns:
        The stage record; `reused` tells whether the folder was finished before this call.
    """
    folder = Path(folder)
    with file_lock(folder.parent / f".{folder.name}.lock", f"stage {stage} in {folder}"):  # one writer a folder
        manifest = finished(folder, fp)
        reused = manifest is not None
        tags = {"patchrec.fingerprint": fp, "patchrec.reused": str(reused)}
        with tracker.run(run_name or stage, tags) if tracker is not None else nullcontext():
            if manifest is None:
                folder.mkdir(parents=True, exist_ok=True)
                manifest = write_manifest(folder, stage, fp, build(folder), config)
            record = StageRecord.of(folder, manifest, reused)
            if tracker is not None and log is not None:
                log(record)
    return record


def write_manifest(folder: Path, stage: str, fp: str, output: StageOutput,
                   config: dict[str, Any] | None = None) -> Manifest:
    """Mark `folder` finished: write its manifest atomically (call it last, after every output file)."""
    manifest = Manifest(stage=stage, fingerprint=fp, metrics=output.metrics, info=output.info, config=config or {},
                        finished_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    write_json(manifest.model_dump(mode="json"), Path(folder) / MANIFEST)
    return manifest

