"""`patchrec serve` (MLflow's scoring server + limits) of the champion on 127.0.0.1: recommendations, 400s with
clear and short messages, 413 for an oversized body before it is parsed, still serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # MLflow model serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post_announced(server: str, size: int) -> tuple[int, dict]:
    """Announce a `size`-byte body, send only its first KiB and read the answer (the server refuses from the
    headers; sending all of it would race the server closing the connection)."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(size))
    conn.endheaders(b'{"dataframe_records": [' + b" " * 1000)
    resp = conn.getresponse()
    try:
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _serve(state: Path, model: str, *extra: str):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "patchrec.cli", "serve", "--model", model, "--port", str(port),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, "patchrec serve exited"
            assert time.monotonic() < deadline, "server did not answer /ping"
            time.sleep(1)
    return proc, url


def _version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as resp:
        return resp.headers["X-Model-Version"]


@pytest.fixture
def server(tiny_state):
    state, _ = tiny_state
    proc, url = _serve(state, "models:/patchrec-tiny@champion")
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_served_champion(server, tmp_path):
    from patchrec.cli import main

    good = json.dumps({"dataframe_records": [{"history": ["m01", "m02", "m03"]}], "params": {"top_k": 5}}).encode()
    code, body = _post(f"{server}/invocations", good)
    assert code == 200 and len(body["predictions"][0]["item_keys"]) == 5
    bad = {
        "unknown item": ({"dataframe_records": [{"history": ["m01", "nope"]}]}, "unknown item key(s) ['nope']"),
        "empty": ({"dataframe_records": [{"history": []}]}, "history is empty"),
        "over-long": ({"dataframe_records": [{"history": ["m01"] * 51}]}, "more than this model accepts (50)"),
        "null top_k": ({"dataframe_records": [{"history": ["m01"]}], "params": {"top_k": None}},
                       "top_k must be a whole number, got null"),
        "null item": ({"dataframe_records": [{"history": ["m01", None]}]}, "history item 1 is null"),
    }
    for name, (payload, message) in bad.items():
        code, body = _post(f"{server}/invocations", json.dumps(payload).encode())
        assert code == 400 and message in body["message"], (name, body)
        assert "Traceback" not in json.dumps(body) and len(json.dumps(body)) < 2000, name
    code, body = _post(f"{server}/invocations", b'{"dataframe_records": [{"hist')
    assert code == 400 and "valid JSON" in body["message"]

    # limits: rows per request, body size (refused before parsing), short echoes of offending values
    many = json.dumps({"dataframe_records": [{"history": ["m01"]}] * 65}).encode()
    code, body = _post(f"{server}/invocations", many)
    assert code == 400 and "at most 64" in body["message"]
    t0 = time.monotonic()
    code, body = _post_announced(server, 2 << 20)
    assert code == 413 and "limit of 1048576 bytes" in body["message"] and time.monotonic() - t0 < 10
    huge_key = json.dumps({"dataframe_records": [{"history": ["m01", "k" * 1_000_000]}]}).encode()
    req = urllib.request.Request(f"{server}/invocations", data=huge_key, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=120)
    text = err.value.read()
    assert err.value.code == 400 and len(text) < 2000 and b"1000000 chars" in text
    assert _post(f"{server}/invocations", good) == (200, _post(f"{server}/invocations", good)[1])  # still serving
    assert main(["recommend", "--url", server, "--history", "m01,m02,m03", "--top-k", "5", "--json"]) == 0
    assert main(["recommend", "--url", server, "--history", "m01,zzz"]) == 2


def test_server_names_its_version_and_follows_the_alias(tiny_state):
    """Audit: after `champion` moved, a running server kept serving the old version, and no answer said which."""
    from mlflow import MlflowClient

    from patchrec import tracking

    state, _ = tiny_state
    tracking.tracking_uri(state)
    client = MlflowClient()
    source = client.get_model_version("patchrec-tiny", "1")
    name = "serve-follow"
    client.create_registered_model(name)
    for _ in range(2):  # two versions of the same artifacts
        client.create_model_version(name, source.source, run_id=source.run_id, model_id=source.model_id)
    client.set_registered_model_alias(name, "champion", "1")
    proc, url = _serve(state, f"models:/{name}@champion", "--refresh-seconds", "1")
    try:
        assert _version(url) == f"{name}/1"
        body = json.dumps({"dataframe_records": [{"history": ["m01", "m02"]}]}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["X-Model-Version"] == f"{name}/1"
        client.set_registered_model_alias(name, "champion", "2")
        deadline = time.monotonic() + 120
        while _version(url) != f"{name}/2":
            assert time.monotonic() < deadline, "the server did not follow the alias"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
