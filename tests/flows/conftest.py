"""One temporary Prefect server for the flow tests of a session, and one tiny full-pipeline run."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="session")
def tiny_state(prefect_server, tmp_path_factory):
    """One full-pipeline run of the tiny profile in a fresh state folder: (state, result)."""
    from flows.pipeline import full_pipeline_flow as full_pipeline

    state = tmp_path_factory.mktemp("state")
    result = full_pipeline("tiny", state_dir=str(state))
    return state, result
