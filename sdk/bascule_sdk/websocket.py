"""WebSocket messages as plugins see them (the ``on_websocket_message`` hook)."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["DROP", "WebSocketClose", "WebSocketMessage"]


class WebSocketMessage:
    """One whole WebSocket message relayed by the gateway (fragments already joined).

    ``sender`` is ``"client"`` (on its way to the service) or ``"service"``
    (on its way to the client). ``data`` is ``str`` for a text message,
    ``bytes`` for a binary one; assign another value (of either type) to
    change what is relayed. ``size`` is the payload's length in bytes (UTF-8
    for text), as received.
    """

    __slots__ = ("data", "sender", "size")

    def __init__(self, sender: Literal["client", "service"], data: str | bytes, size: int | None = None) -> None:
        self.sender = sender
        self.data = data
        self.size = size if size is not None else len(data.encode() if isinstance(data, str) else data)

    @property
    def text(self) -> bool:
        """Whether it is a text message (``data`` is ``str``)."""
        return isinstance(self.data, str)

    def __repr__(self) -> str:
        kind = "text" if self.text else "binary"
        return f"WebSocketMessage({self.sender!r}, {kind}, {self.size} bytes)"


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


#: Returned by ``on_websocket_message``: the message is not relayed (later hooks do not see it).
DROP: Final = _Drop()


class WebSocketClose(Exception):
    """Raise from ``on_websocket_message`` to close the WebSocket: both the client and
    the service get a close frame with ``code`` (RFC 6455 7.4; 1008 "policy violation",
    or 4000-4999 for your own) and ``reason`` (at most 123 bytes of UTF-8, shown to both)."""

    def __init__(self, code: int, reason: str = "") -> None:
        if not (1000 <= code <= 1003 or 1007 <= code <= 1013 or 3000 <= code <= 4999):
            raise ValueError(f"{code} is not a close code an endpoint may send (RFC 6455 7.4)")
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self.code = code
        self.reason = reason
        super().__init__(f"close {code} {reason}".strip())
