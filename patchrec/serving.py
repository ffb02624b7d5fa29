"""`patchrec serve`: MLflow's scoring server for a registered model, behind a request-size limit.

MLflow's server reads and parses the whole body before the model sees it, so a huge request costs memory
and a core even when the model would refuse it. This ASGI wrapper answers 413 from the Content-Length
header, or as soon as a streamed body passes the limit, before anything is parsed. The row cap and short
error messages are the model's own (`Recommender`), so they also hold under plain `mlflow models serve`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RequestSizeLimit", "build_app", "serve"]

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


def build_app(model_uri: str) -> Any:
    """MLflow's scoring app for `model_uri`, limited to the model's `max_request_bytes`."""
    from mlflow.pyfunc import load_model, scoring_server

    model = load_model(model_uri)
    limit = int(model.unwrap_python_model().rec.max_request_bytes)
    return RequestSizeLimit(scoring_server.init(model), limit)


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> None:
    """Serve `model_uri` on host:port (blocks until stopped)."""
    import uvicorn

    uvicorn.run(build_app(model_uri), host=host, port=port, log_level="warning", timeout_keep_alive=5)
