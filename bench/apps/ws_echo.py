"""The WebSocket service of bench/ws.py: trio-websocket's server, echoing every message.

python bench/apps/ws_echo.py PORT
"""

from __future__ import annotations

import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


if __name__ == "__main__":
    trio.run(serve_websocket, echo, "127.0.0.1", int(sys.argv[1]), None)
