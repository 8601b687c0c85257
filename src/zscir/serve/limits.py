"""Request limits of the service; every violation is a 4xx with a message saying which limit and its value.

Three layers, outermost first:
- `GuardedH11Protocol` (the uvicorn protocol `zscir serve` runs): a connection must deliver a request's
  headers within `read_timeout_s`, so a client that opens a connection and trickles bytes is dropped;
- `BodyLimitMiddleware` (ASGI): a body is counted as it streams, chunked or not, and cut with a 413 as soon
  as it passes `max_body_bytes`, before it is parsed or spooled; a body that stalls for `read_timeout_s`
  or takes longer than `body_timeout_s` in all gets a 408;
- the routes (serve/app.py): text length, k, pixels from the image header (`max_pixels`), formats.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import HTTPException

FORM_OVERHEAD_BYTES = 65536  # multipart boundaries and the small text fields around one image


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_text_chars: int = 500
    max_k: int = 100
    read_timeout_s: float = 15.0  # headers of a request; longest pause while a body streams
    body_timeout_s: float = 120.0  # a whole request body

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_text_chars", "max_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name}={value!r}: must be a positive integer")
        for name in ("read_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name}: must be positive")

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES


class BodyLimitMiddleware:
    """ASGI middleware: refuse a body over `limits.max_body_bytes` as it streams (413), and a body that
    stalls (408). Content-Length alone proves nothing: a chunked body declares no length."""

    def __init__(self, app, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_json(send, 413, self._too_large(int(value)))
                return
        received = 0
        body_done = False
        started = time.monotonic()
        lim = self.limits

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline on that
                return await receive()
            left = lim.body_timeout_s - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.001, min(lim.read_timeout_s, left)))
            except TimeoutError:
                raise HTTPException(408, f"request body not received in time (a pause over {lim.read_timeout_s:g} s "
                                         f"or over {lim.body_timeout_s:g} s in all)") from None
            if message.get("type") == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    # raised inside the route's body parsing: FastAPI re-raises HTTPException as is
                    raise HTTPException(413, self._too_large(received, streamed=True))
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, n: int, streamed: bool = False) -> str:
        what = f"more than {self.limits.max_body_bytes} bytes received" if streamed else f"request body is {n} bytes"
        return f"{what}; the upload limit is {self.limits.max_upload_bytes} bytes"


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def guarded_h11_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol with a deadline for each request's headers: uvicorn times out idle keep-alive
    connections, but not one that never completes a request (a slow or stuck client would hold it forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(read_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _header_timeout(self) -> None:
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # headers are in; the body has its own deadline (BodyLimitMiddleware)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol
