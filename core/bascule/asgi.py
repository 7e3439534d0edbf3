"""The ASGI plumbing shared by the gateway's apps (gateway, admin listener, test upstreams):
typed ``Scope``/``Receive``/``Send``, sending a ``Response``, reading a request body, passing
an upstream's early hints on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol

from bascule_sdk import HTTPError, Response
from bascule_sdk.http import ClientDisconnected, iterate

__all__ = [
    "EARLY_HINT",
    "EarlyHints",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "accept_lifespan",
    "early_hints",
    "read_body",
    "receive_chunk",
    "send_response",
    "too_large",
]

log = logging.getLogger("bascule")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Tally(Protocol):
    """Where ``send_response`` counts the body bytes sent (a ``Context``)."""

    bytes_sent: int | None


async def accept_lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol for an app with nothing to start or stop."""
    await receive()  # lifespan.startup
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def send_response(send: Send, response: Response, *, head: bool = False, tally: Tally | None = None) -> None:
    """Send ``response`` as is (status, ``headers.raw``, body bytes or stream).

    ``head``: the answer to a HEAD request, sent without its body. ``tally.bytes_sent``
    is the body bytes sent so far, also when a stream fails midway.
    """
    await send({"type": "http.response.start", "status": response.status, "headers": response.headers.raw})
    body = response.body
    if isinstance(body, bytes) or head:
        body = body if isinstance(body, bytes) and not head else b""
        await send({"type": "http.response.body", "body": body})
        if tally is not None:
            tally.bytes_sent = len(body)
        return
    if tally is not None:
        tally.bytes_sent = 0
    async for chunk in iterate(body):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if tally is not None:
            tally.bytes_sent = (tally.bytes_sent or 0) + len(chunk)
    await send({"type": "http.response.body", "body": b""})


def too_large(limit: int) -> HTTPError:
    """The 413 for a request body over ``limit`` bytes."""
    return HTTPError(413, f"The request body is larger than {limit} bytes.")


async def receive_chunk(receive: Receive) -> tuple[bytes, bool]:
    """The next piece of the request body and whether more follows; ``ClientDisconnected`` if the client left."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected()
    return message.get("body", b""), message.get("more_body", False)


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; ``too_large(limit)`` as soon as it exceeds ``limit`` bytes,
    ``ClientDisconnected`` if the client goes away."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        chunk, more = await receive_chunk(receive)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


EARLY_HINT = "http.response.early_hint"


class EarlyHints:
    """Passes an upstream's ``103 Early Hints`` on to the client (its ``Link``
    fields: all that hypercorn's ``http.response.early_hint`` extension sends)
    until the final response starts. Other 1xx responses (100 Continue) stop
    here. Set per request only when the server offers the extension: hypercorn
    0.18 does for HTTP/2 and HTTP/3, not HTTP/1.x."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send: Send | None = send

    async def __call__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        links = [v for k, v in headers if k == b"link"] if status == 103 else None
        if links and self.send is not None:
            try:
                await self.send({"type": EARLY_HINT, "links": links})
            except Exception:  # a hint is optional: never fail the request over it
                log.debug("could not send early hints", exc_info=True)


#: The early hints of the request that the current task serves (None: not offered): set by the
#: gateway per request (``bascule.gateway``), passed upstream by a route's forward (``bascule.runtime``).
early_hints: ContextVar[EarlyHints | None] = ContextVar("bascule_early_hints", default=None)
