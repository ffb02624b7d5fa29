"""kill -9 inside registration and promotion: a re-run finishes the registration, aliases and tags agree.

Each case registers the finished tiny run under its own model name in the shared tiny state, in a real
process that SIGKILLs itself at a named point (`PATCHREC_KILL_AT`), then registers again in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real processes, a real SQLite MLflow store

REGISTER = """
import json, sys
from patchrec import stages
from patchrec.profiles import load_pipeline
cfg = load_pipeline("tiny", json.loads(sys.argv[2]), sys.argv[1])
data = stages.data_record(cfg.data.out)
cat = stages.build_catalog(cfg, data)
ppt = stages.train_model(cfg, "ppt", data, cat)
run = stages.train_model(cfg, "pft", data, cat, ppt)
val, test = (stages.evaluate_model(cfg, s, data, cat, run) for s in ("val", "test"))
assert all(r.reused for r in (cat, ppt, run, val, test))
print(json.dumps(stages.register_model(cfg, data, cat, run, val, test).info))
"""


def _register(state, overrides: dict, kill_at: str | None = None) -> subprocess.CompletedProcess:
    # MLflow wrote this process's tracking URI into os.environ: the child must use the state's own store
    env = {k: v for k, v in os.environ.items() if k not in ("PATCHREC_KILL_AT", "MLFLOW_TRACKING_URI",
                                                               "MLFLOW_REGISTRY_URI")}
    if kill_at:
        env["PATCHREC_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", REGISTER, str(state), json.dumps(overrides)], env=env,
                          capture_output=True, text=True, timeout=600)


def _consistent(name: str) -> dict[str, int]:
    """Every version's `promotion` tag agrees with the aliases; returns the aliases."""
    from mlflow import MlflowClient

    client = MlflowClient()
    labels = {k: int(v) for k, v in client.get_registered_model(name).aliases.items()}
    for v in client.search_model_versions(f"name = '{name}'"):
        reason = v.tags.get("promotion")
        assert reason is not None, f"v{v.version} has no promotion decision"
        if int(v.version) == labels.get("champion"):
            assert not reason.startswith("not promoted"), (v.version, reason)
        elif not v.tags.get("rolled_back") and not v.tags.get("previous_champion"):
            assert reason.startswith("not promoted") or int(v.version) < labels["champion"], (v.version, reason)
    return labels


@pytest.mark.parametrize("kill_at", ["register.version_created", "registry.alias.challenger",
                                     "registry.alias.champion"])
def test_kill_during_first_registration_then_rerun_finishes_it(tiny_state, kill_at):
    from patchrec import tracking

    state, _ = tiny_state
    name = f"crash-{kill_at.replace('.', '-')}"
    killed = _register(state, {"registry.name": name}, kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = _register(state, {"registry.name": name})
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["version"] == 1 and info["resumed"] and info["promoted"], info
    tracking.tracking_uri(state)
    assert _consistent(name) == {"champion": 1, "challenger": 1}


def test_kill_inside_promote_over_a_champion_then_rerun_finishes_it(tiny_state):
    """The old promote() wrote its tag before the alias: a kill between them left `promotion` claiming a
    champion that the alias did not show, and every re-run said "already registered"."""
    from mlflow import MlflowClient

    from patchrec import tracking

    state, _ = tiny_state
    name = "crash-promote"
    first = _register(state, {"registry.name": name})
    assert first.returncode == 0, first.stderr[-2000:]
    for point, margin in (("registry.tag.previous_champion", -1.0), ("registry.alias.champion", -0.5)):
        over = {"registry.name": name, "registry.margin": margin}  # another margin: another version
        killed = _register(state, over, point)
        assert killed.returncode == -9, killed.stderr[-2000:]
        done = _register(state, over)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["promoted"]
    tracking.tracking_uri(state)
    assert _consistent(name) == {"champion": 3, "challenger": 3}
    client = MlflowClient()
    assert client.get_model_version(name, "2").tags["previous_champion"] == "1"
    assert client.get_model_version(name, "3").tags["previous_champion"] == "2"
