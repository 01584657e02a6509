"""Keep slow or oversized clients from holding the ingress: a deadline on reading the body, a header size cap.

Why at the ingress: Ray Serve's HTTP proxy (uvicorn with httptools, ray 2.60) calls the application as soon as
a request's headers are in, and the ingress replica then pulls the body through the proxy while holding one of
its `max_ongoing_requests` slots. The proxy has no body-read deadline of its own (its `HTTPOptions` offer only
an end-to-end `request_timeout_s`, which a client can lift with `x-request-timeout-seconds: 0`, and
`keep_alive_timeout_s`), so about 1,024 clients trickling a body held every slot and stopped all traffic. Here
a request must deliver its whole body within `body_timeout_s` of reaching the ingress, or it is answered 408
with `Connection: close` and its slot is freed.

Headers: the proxy reads them before the application runs, and neither uvicorn's httptools parser nor Serve's
options bound their size or read time; a header trickle holds a proxy connection, not an ingress slot. The
ingress refuses requests whose headers exceed `max_header_bytes` (431) so oversized headers go no further;
a front proxy (the cluster's ingress controller: nginx `client_header_timeout`, `large_client_header_buffers`)
is where header read time and size must be bounded on the wire (serving/README.md says so).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusionrec.serving.errors import send_json

BODY_TIMEOUT_S = 10.0  # the whole body, from the request reaching the ingress; a 1 MiB body at 1 Mbit/s is ~8 s
MAX_HEADER_BYTES = 16 * 1024  # nginx's and HAProxy's default header buffer: more is not a browser or SDK


class BodyTimeout(StarletteHTTPException):
    """The body did not arrive in time. An HTTPException because FastAPI turns any other error raised while it
    reads the body into a 400."""

    field = "body"

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s; send it at once",
                         headers={"Connection": "close"})


class SlowClientGuard:
    """Pure ASGI middleware: the header cap on every HTTP request, the body deadline on every body read.

    Args:
        app: the application.
        body_timeout_s: seconds from the request reaching the ingress to its last body byte.
        max_header_bytes: the sum of header names and values a request may carry.
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float = BODY_TIMEOUT_S,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app, self.body_timeout_s, self.max_header_bytes = app, body_timeout_s, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(name) + len(value) for name, value in scope.get("headers", []))
        if size > self.max_header_bytes:
            await send_json(send, 431, {"error": f"request headers are {size} bytes; at most "
                                                 f"{self.max_header_bytes}", "field": "headers"},
                            {"Connection": "close"})
            return
        await self.app(scope, self._timed(receive), send)

    def _timed(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body_done = False

        async def timed() -> Message:
            nonlocal body_done
            if body_done:  # after the body, a receive waits for a disconnect: no deadline on that
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return timed
