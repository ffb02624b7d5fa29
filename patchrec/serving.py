"""`patchrec serve`: MLflow's scoring server for a registered model, behind a request-size limit.

MLflow's server reads and parses the whole body before the model sees it, so a huge request costs memory
and a core even when the model would refuse it. This ASGI wrapper answers 413 from the Content-Length
header, or as soon as a streamed body passes the limit, before anything is parsed. The row cap and short
error messages are the model's own (`Recommender`), so they also hold under plain `mlflow models serve`.
Every answer names the version that gave it (header `X-Model-Version: name/N`), and a served alias is
followed: when `champion` moves, the server moves with it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ModelSwitch", "RequestSizeLimit", "build_app", "serve"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    pass


class RequestSizeLimit:
    """ASGI middleware: HTTP requests whose body exceeds `max_bytes` get 413 and never reach `app`."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send: Send, size: str) -> None:
        body = json.dumps({"error_code": "REQUEST_TOO_LARGE",
                           "message": f"request body of {size} bytes is over this server's limit of "
                                      f"{self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send, length.decode(errors="replace")[:20])
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, f"more than {self.max_bytes}")


def _scoring_app(model_uri: str) -> Any:
    """MLflow's scoring app for `model_uri`, limited to the model's `max_request_bytes`."""
    from mlflow.pyfunc import load_model, scoring_server

    model = load_model(model_uri)
    limit = int(model.unwrap_python_model().rec.max_request_bytes)
    return RequestSizeLimit(scoring_server.init(model), limit)


def _parse(model_uri: str) -> tuple[str | None, str | None, str | None]:
    """(name, alias, version) of a `models:/name@alias` or `models:/name/version` URI; Nones otherwise."""
    found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([0-9]+))", model_uri)
    return found.groups() if found else (None, None, None)  # type: ignore[return-value]


class ModelSwitch:
    """ASGI app serving one registered version at a time; every response says which (`X-Model-Version`).

    Given `models:/name@alias`, the alias is resolved to a version at start and checked again every
    `refresh_s` seconds: when it moves (a new champion, a rollback), the new version is loaded beside the
    old one and takes the next requests; requests in flight finish on the old one. A failed check or load
    keeps the current version serving and is logged.
    """

    def __init__(self, model_uri: str, refresh_s: float | None = 60.0):
        self.uri, self.refresh_s = model_uri, refresh_s
        self.name, self.label, version = _parse(model_uri)
        self.version = self._resolve() if self.label else version
        self.app = _scoring_app(self._pinned(self.version))
        self._stop = threading.Event()
        if self.label and refresh_s:
            threading.Thread(target=self._follow, name="follow-alias", daemon=True).start()

    @property
    def header(self) -> bytes:
        return f"{self.name}/{self.version}".encode() if self.name else self.uri.encode()[:200]

    def _resolve(self) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient().get_model_version_by_alias(self.name, self.label).version)

    def _pinned(self, version: str | None) -> str:
        return f"models:/{self.name}/{version}" if self.name and version else self.uri

    def _follow(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                version = self._resolve()
                if version != self.version:
                    log.warning("%s@%s moved from v%s to v%s: loading it", self.name, self.label, self.version,
                                version)
                    app = _scoring_app(self._pinned(version))
                    self.app, self.version = app, version  # one assignment each: the next request sees both
                    log.warning("now serving %s v%s", self.name, version)
            except Exception as exc:  # keep serving what works
                log.warning("could not follow %s: %s", self.uri, str(exc).splitlines()[0][:300])

    def close(self) -> None:
        self._stop.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app, header = self.app, self.header
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-model-version", header)]}
            await send(message)

        await app(scope, receive, tagged)


def build_app(model_uri: str, refresh_s: float | None = 60.0) -> ModelSwitch:
    """The served app: MLflow's scoring server for `model_uri`, its size limit, its version on every answer."""
    return ModelSwitch(model_uri, refresh_s)


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001, refresh_s: float | None = 60.0) -> None:
    """Serve `model_uri` on host:port (blocks until stopped); an alias is followed every `refresh_s` s."""
    import uvicorn

    app = build_app(model_uri, refresh_s)
    print(f"serving {app.header.decode()} ({model_uri})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)
    finally:
        app.close()
