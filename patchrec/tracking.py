"""MLflow tracking: one parent run per pipeline run, one nested run per stage, plots as PNG artifacts.

The embedded default is SQLite in the state folder (`<state>/mlflow.db`, artifacts in `<state>/mlartifacts`);
`MLFLOW_TRACKING_URI` points everything at any other server. Runs are passed by id, never through
MLflow's thread-local "active run", so stages can run in Prefect worker threads or other processes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from patchrec.evaluation.result import EvalResult
    from patchrec.training import StageResult

__all__ = [
    "EXPERIMENT_KIND",
    "USER_ENV",
    "artifact_dir",
    "end_pipeline_run",
    "experiment_id",
    "log_epochs",
    "log_eval",
    "log_training",
    "plot_history_buckets",
    "plot_prompt_tokens",
    "plot_training",
    "stage_run",
    "start_pipeline_run",
    "tracking_uri",
]


# The user's MLflow settings, read before anything in this process sets them: `mlflow.set_tracking_uri`
# also writes MLFLOW_TRACKING_URI into os.environ, which must not pin later state folders to the first one.
USER_ENV: dict[str, str | None] = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


_READY: set[str] = set()  # SQLite stores this process has seen initialised


def tracking_uri(state_dir: Path) -> str:
    """Set and return the tracking (and registry) URI: the user's environment's, else SQLite in `state_dir`.

    A SQLite store is created (MLflow's schema migrations) by one process at a time, under a lock file
    beside the database (`mlflow.db.lock`): two pipelines starting at once on a fresh store would otherwise
    both migrate the same file and leave it half-migrated.
    """
    import mlflow

    uri = USER_ENV["MLFLOW_TRACKING_URI"] or f"sqlite:///{Path(state_dir).resolve() / 'mlflow.db'}"
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    registry = USER_ENV["MLFLOW_REGISTRY_URI"] or uri
    mlflow.set_registry_uri(registry)
    if uri.startswith("sqlite:") and uri not in _READY:
        from mlflow import MlflowClient

        from patchrec.io import file_lock

        db = Path(uri.removeprefix("sqlite:///"))
        with file_lock(db.with_name(db.name + ".lock"), f"the MLflow store {uri}"):
            client = MlflowClient(uri, registry)
            client.search_experiments(max_results=1)  # creates and migrates the tracking tables
            client.search_registered_models(max_results=1)  # and the registry's
        _READY.add(uri)
    return uri


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's model-training view, not GenAI


def experiment_id(state_dir: Path, name: str) -> str:
    """The experiment `name`, created on first use (local artifacts under `<state>/mlartifacts`) and marked as
    model training, so the UI opens it on runs and models rather than on the GenAI overview."""
    import mlflow

    uri = tracking_uri(state_dir)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (Path(state_dir).resolve() / "mlartifacts" / name).as_uri() if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def stage_run(state_dir: Path, experiment: str, name: str, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[Any]:
    """A run for one stage, nested under `parent_run_id` when given (a stage run alone is top-level)."""
    import mlflow

    exp = experiment_id(state_dir, experiment)
    with mlflow.start_run(experiment_id=exp, run_name=name, parent_run_id=parent_run_id,
                          nested=parent_run_id is not None, tags={"patchrec.stage": name, **(tags or {})}) as run:
        yield run


def start_pipeline_run(state_dir: Path, experiment: str, name: str, params: dict[str, Any],
                       tags: dict[str, str] | None = None) -> str:
    """Create the parent run of a pipeline run and log the resolved config as params; returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    exp = experiment_id(state_dir, experiment)
    client = MlflowClient()
    run = client.create_run(exp, run_name=name, tags={"patchrec.flow": name, **(tags or {})})
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def end_pipeline_run(state_dir: Path, run_id: str, ok: bool, metrics: dict[str, float] | None = None,
                     tags: dict[str, str] | None = None) -> None:
    from mlflow import MlflowClient

    tracking_uri(state_dir)
    client = MlflowClient()
    for k, v in (metrics or {}).items():
        client.log_metric(run_id, k, float(v))
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def log_training(run_id: str, meta: StageResult, prefix: str = "") -> None:
    """Per-step loss, learning rate, throughput and compressed share, and the validation probes of the learning
    curve (`probe_val_*`), batched (one write per 1000 values)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    series = {"loss": meta.losses, "lr": meta.lrs, "samples_per_s": meta.step_samples_per_s,
              "compressed_share": meta.compressed_share}
    metrics = [Metric(f"{prefix}{key}", float(v), now, i) for key, vals in series.items()
               for i, v in enumerate(vals)]
    metrics += [Metric(f"{prefix}probe_{k}", float(v), now, int(c["step"])) for c in meta.curve
                for k, v in c.items() if k.startswith("val_")]  # the learning curve, step = optimizer step
    client = MlflowClient()
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_epochs(run_id: str, log: list[dict[str, float]]) -> None:
    """Per-epoch values of a baseline's training log (`loss`, `val_ndcg_10`), step = epoch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(e["epoch"])) for e in log for k, v in e.items() if k != "epoch"]
    for i in range(0, len(metrics), 1000):
        MlflowClient().log_batch(run_id, metrics=metrics[i : i + 1000])


def log_eval(result: EvalResult, prefix: str) -> None:
    """Evaluation metrics of the active run as `<prefix>_<metric>` (names carry no '@')."""
    import mlflow

    metrics = {f"{prefix}_{k}": float(v) for k, v in result.metrics.items()}
    metrics[f"{prefix}_users_per_s"] = float(result.users_per_s)
    metrics[f"{prefix}_samples"] = float(result.samples)
    mlflow.log_metrics(metrics)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _figure().close(fig)
    return path


def plot_training(curves: dict[str, StageResult], path: Path) -> Path:
    """Loss and learning rate per optimizer step, one line per stage (e.g. PPT, PFT)."""
    plt = _figure()
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, meta in curves.items():
        ax_loss.plot(range(len(meta.losses)), meta.losses, label=name)
        ax_lr.plot(range(len(meta.lrs)), meta.lrs, label=name)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    ax_lr.set(title="learning rate", xlabel="optimizer step", ylabel="lr")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_history_buckets(result: EvalResult, path: Path) -> Path:
    """HR@10 and HR@20 by history length bucket, with the number of samples per bucket."""
    plt = _figure()
    buckets = result.by_history_length
    names = sorted(buckets, key=lambda b: int(b.split("-")[0].rstrip("+")))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = range(len(names))
    for off, k in ((-0.2, 10), (0.2, 20)):
        ax.bar([i + off for i in x], [buckets[b].get(f"hr_{k}", 0.0) for b in names], width=0.4, label=f"HR@{k}")
    ax.set_xticks(list(x), [f"{b}\n(n={buckets[b]['n']})" for b in names])
    ax.set(title=f"{result.split}: HR@K by history length ({result.layout or result.model})",
           xlabel="history length (items)", ylabel="hit rate")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_prompt_tokens(catalog_info: dict[str, Any], path: Path) -> Path:
    """Mean prompt tokens per layout on the same histories."""
    plt = _figure()
    tokens = catalog_info["prompt_tokens"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bars = ax.barh(list(tokens), list(tokens.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.0f", padding=3)
    ax.invert_yaxis()
    ax.set(title=f"tokens per prompt ({catalog_info['prompt_samples']} {catalog_info['prompt_split']} histories, "
                 f"<= {catalog_info['max_history']} items)", xlabel="mean prompt tokens")
    return _save(fig, path)


@contextlib.contextmanager
def artifact_dir() -> Iterator[Path]:
    """A scratch folder for files that are logged as artifacts and then discarded."""
    with tempfile.TemporaryDirectory(prefix="patchrec-artifacts-") as tmp:
        yield Path(tmp)
