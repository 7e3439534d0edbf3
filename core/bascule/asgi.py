"""Small ASGI pieces shared by the gateway's own apps (admin listener, test upstreams)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["accept_lifespan"]


async def accept_lifespan(receive: Callable, send: Callable) -> None:
    """Answer the ASGI lifespan protocol for an app with nothing to start or stop."""
    await receive()  # lifespan.startup
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})
