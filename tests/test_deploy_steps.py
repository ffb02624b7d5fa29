"""The deployments' pull step: it enters the clone `prefect deploy` recorded, and says in one line what to do when
a worker cannot find it."""

from __future__ import annotations

import os

import pytest
import yaml

from patchrec.deploy_steps import DeploymentSetupError, enter_clone
from patchrec.profiles import PROJECT_ROOT


@pytest.fixture
def here(monkeypatch):
    monkeypatch.delenv("PATCHREC_HOME", raising=False)
    monkeypatch.chdir(os.getcwd())  # restored after the test


def test_the_pull_step_enters_the_recorded_clone(here, tmp_path):
    os.chdir(tmp_path)
    assert enter_clone(str(PROJECT_ROOT)) == {"directory": str(PROJECT_ROOT.resolve())}
    assert os.getcwd() == str(PROJECT_ROOT.resolve())


@pytest.mark.parametrize("recorded", ["/nowhere/patchrec", "{{ clone.stdout }}", ""])
def test_a_missing_clone_is_one_line_that_says_what_to_do(here, recorded):
    with pytest.raises(DeploymentSetupError) as err:
        enter_clone(recorded)
    msg = str(err.value)
    assert "\n" not in msg and "prefect deploy --all" in msg and "PATCHREC_HOME" in msg


def test_a_folder_that_is_not_a_clone_is_refused(here, tmp_path):
    with pytest.raises(DeploymentSetupError, match=r"has no flows/pipeline\.py"):
        enter_clone(str(tmp_path))


def test_patchrec_home_on_the_worker_wins(here, monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHREC_HOME", str(PROJECT_ROOT))
    assert enter_clone("/nowhere/patchrec")["directory"] == str(PROJECT_ROOT.resolve())


def test_prefect_yaml_records_the_clone_at_deploy_time_and_enters_it_with_this_step():
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    (build,) = spec["build"]
    (pull,) = spec["pull"]
    step_id = build["prefect.deployments.steps.run_shell_script"]["id"]
    assert pull == {"patchrec.deploy_steps.enter_clone": {"directory": "{{ " + step_id + ".stdout }}"}}
