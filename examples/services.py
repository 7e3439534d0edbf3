"""Demo backend services for the default plugins.toml, the seed's two stories.

E-commerce: users (9101), products (9102), orders (9103), payments (9104).
Ride-hailing: drivers (9105, driver location, and its live position over a
WebSocket at /rides/{id}/live) and payments (ride payment status).

Each is a tiny ASGI app serving JSON, run with hypercorn on 127.0.0.1.
``python examples/services.py`` starts them all and runs until Ctrl-C.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

USERS = {"1": {"id": "1", "name": "Ada", "city": "Lyon"}, "2": {"id": "2", "name": "Grace", "city": "Oslo"}}
PRODUCTS = {
    "p1": {"id": "p1", "name": "Running shoes", "price": 89.0, "stock": 12},
    "p2": {"id": "p2", "name": "Rain jacket", "price": 120.0, "stock": 4},
    "p3": {"id": "p3", "name": "Water bottle", "price": 15.5, "stock": 40},
}
ORDERS = {"o1": {"id": "o1", "user_id": "1", "items": ["p1", "p3"], "total": 104.5, "status": "shipped"}}
PAYMENTS = {
    "o1": {"order_id": "o1", "status": "paid", "method": "card"},
    "r1": {"ride_id": "r1", "status": "authorised", "amount": 18.4, "currency": "EUR"},
}
DRIVERS = {"r1": {"ride_id": "r1", "driver": "Marie", "lat": 45.7640, "lon": 4.8357, "eta_minutes": 4}}

Handler = Callable[[dict, bytes], tuple[int, object]]


def app(routes: dict[str, Handler], name: str):
    """An ASGI app answering JSON from ``routes`` (regex -> handler)."""
    compiled = [(re.compile(f"^{pattern}$"), handler) for pattern, handler in routes.items()]

    async def asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await live_position(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, data = 404, {"error": "not found", "service": name}
        for pattern, handler in compiled:
            if m := pattern.match(scope["path"]):
                status, data = handler(scope | {"params": m.groupdict()}, body)
                break
        payload = json.dumps(data).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if name == "products" and status == 200:
            headers.append((b"cache-control", b"public, max-age=30"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return asgi


async def live_position(scope: dict, receive: Callable, send: Callable) -> None:
    """A WebSocket at /rides/{id}/live: the driver's position every half second until
    arrival (close 1000), or until the client leaves. Other paths are refused (403)."""
    await receive()  # websocket.connect
    m = re.match(r"^/rides/(?P<id>[^/]+)/live$", scope["path"])
    if m is None or m["id"] not in DRIVERS:
        await send({"type": "websocket.close"})
        return
    await send({"type": "websocket.accept"})
    ride = DRIVERS[m["id"]]
    async with trio.open_nursery() as nursery:

        async def until_the_client_leaves() -> None:
            while (await receive())["type"] != "websocket.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_the_client_leaves)
        for step in range(ride["eta_minutes"] * 5, -1, -1):  # toward the pickup point
            position = {**ride, "lat": round(ride["lat"] - step * 0.0004, 5), "eta_minutes": round(step / 5, 1)}
            await send({"type": "websocket.send", "text": json.dumps(position)})
            await trio.sleep(0.5)
        await send({"type": "websocket.close", "code": 1000, "reason": "arrived"})
        nursery.cancel_scope.cancel()


def found(table: dict, key: str) -> tuple[int, object]:
    return (200, table[key]) if key in table else (404, {"error": f"{key} not found"})


def create_order(scope: dict, body: bytes) -> tuple[int, object]:
    order = json.loads(body or b"{}")
    order_id = f"o{len(ORDERS) + 1}"
    ORDERS[order_id] = {"id": order_id, "status": "created", **order}
    return 201, ORDERS[order_id]


SERVICES = {
    "users": (
        9101,
        {
            r"/users": lambda s, b: (200, list(USERS.values())),
            r"/users/(?P<id>[^/]+)": lambda s, b: found(USERS, s["params"]["id"]),
        },
    ),
    "products": (
        9102,
        {
            r"/products": lambda s, b: (200, list(PRODUCTS.values())),
            r"/products/(?P<id>[^/]+)": lambda s, b: found(PRODUCTS, s["params"]["id"]),
        },
    ),
    "orders": (
        9103,
        {
            r"/orders": lambda s, b: create_order(s, b) if s["method"] == "POST" else (200, list(ORDERS.values())),
            r"/orders/(?P<id>[^/]+)": lambda s, b: found(ORDERS, s["params"]["id"]),
        },
    ),
    "payments": (
        9104,
        {
            r"/payments/(?P<id>[^/]+)": lambda s, b: found(PAYMENTS, s["params"]["id"]),
        },
    ),
    "drivers": (
        9105,
        {
            r"/rides/(?P<id>[^/]+)/location": lambda s, b: found(DRIVERS, s["params"]["id"]),
        },
    ),
}


async def main(host: str = "127.0.0.1") -> None:
    async with trio.open_nursery() as nursery:
        for name, (port, routes) in SERVICES.items():
            config = Config()
            config.bind = [f"{host}:{port}"]
            config.accesslog = None
            nursery.start_soon(partial(serve, app(routes, name), config))


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
