"""Cross-origin isolation for the browser page: COOP/COEP headers on every response.

A page is ``crossOriginIsolated`` only when its document is served with
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``;
only then does the browser give it ``SharedArrayBuffer``, which ONNX Runtime Web's
multi-threaded WebAssembly needs (its worker scripts must carry the same embedder policy).
Everything the page loads comes from this server, so ``require-corp`` blocks nothing. API
clients that are not browsers ignore the headers.
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ISOLATION_HEADERS = (
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
)


class CrossOriginIsolation:
    """Pure ASGI middleware adding :data:`ISOLATION_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *ISOLATION_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_isolated)
