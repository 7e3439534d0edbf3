"""The aggregate plugin through a real gateway, with real upstream servers."""

from __future__ import annotations

import json
import socket
import time
from functools import partial
from types import SimpleNamespace
from typing import ClassVar

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import Received, start_gateway, start_upstream
from bascule_aggregate import Aggregate
from bascule_sdk import Context, Plugin, Request, Response, hookimpl

ROUTE = """
[[routes]]
name = "agg"
paths = ["{path}"]
methods = ["GET"]
[routes.plugins.aggregate]
{settings}
"""


def services(**urls: str) -> str:
    return "".join(f'[services.{name}]\ntargets = ["{url}"]\n' for name, url in urls.items())


def route(settings: str, path: str = "/agg") -> str:
    return ROUTE.format(path=path, settings=settings)


async def gateway(nursery, settings: str, path: str = "/agg", **urls: str):
    return await start_gateway(nursery, services(**urls) + route(settings, path), plugins=[Aggregate])


def returning(data, status: int = 200, delay: float = 0.0, log: list | None = None):
    """An upstream handler answering ``data`` (JSON) after ``delay``; logs when it finishes."""

    async def handler(request: Received) -> Response:
        await trio.sleep(delay)
        if log is not None:
            log.append(trio.current_time())
        if isinstance(data, bytes):
            return Response(status, {"content-type": "text/plain"}, data)
        return Response.json(data, status)

    return handler


async def get(gw, target: str = "/agg", **kwargs):
    async with gw.client() as client:
        return await client.get(target, **kwargs)


async def shaped(nursery, data, backend_settings: str):
    """The answer of a one-backend route whose backend answers ``data``."""
    up = await start_upstream(nursery, returning(data))
    gw = await gateway(
        nursery,
        f"""
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        {backend_settings}
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    return r.json()


# -- concurrency and sequencing ---------------------------------------------------------------


async def test_three_backends_run_concurrently(nursery):
    finished: list[float] = []
    ups = [await start_upstream(nursery, returning({f"k{i}": i}, delay=0.2, log=finished)) for i in range(3)]
    gw = await gateway(
        nursery,
        "".join(
            f"""
        [[routes.plugins.aggregate.backends]]
        name = "b{i}"
        service = "s{i}"
    """
            for i in range(3)
        ),
        **{f"s{i}": up.url for i, up in enumerate(ups)},
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.json() == {"k0": 0, "k1": 1, "k2": 2}
    assert r.headers["x-bascule-completed"] == "true"
    started = [up.requests[0].at for up in ups]
    assert len(finished) == 3
    assert max(started) < min(finished)  # every backend was called before any had answered


class Order(Plugin):
    """Records the path of each upstream request of the route, in the order the gateway sends them."""

    name = "order"
    sent: ClassVar[list[str]] = []

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        self.sent.append(request.path)


async def test_the_backend_expected_to_answer_last_is_called_first(nursery):
    delays = {"fast": 0.0, "quick": 0.0, "slow": 0.1}
    ups = {name: await start_upstream(nursery, returning({name: 1}, delay=delay)) for name, delay in delays.items()}
    backends = "".join(
        f"""
        [[routes.plugins.aggregate.backends]]
        name = "{name}"
        service = "{name}"
        path = "/{name}"
    """
        for name in delays
    )
    Order.sent = []
    gw = await start_gateway(
        nursery,
        services(**{n: up.url for n, up in ups.items()}) + route(backends) + "[routes.plugins.order]\n",
        plugins=[Aggregate, Order],
    )
    for _ in range(4):
        r = await get(gw)
        assert r.status_code == 200, r.text
        assert r.json() == {"fast": 1, "quick": 1, "slow": 1}
    rounds = [Order.sent[i : i + 3] for i in range(0, 12, 3)]
    assert all(sorted(sent) == ["/fast", "/quick", "/slow"] for sent in rounds)
    assert rounds[0][0] == "/fast"  # nothing known yet: the order of the config
    assert [sent[0] for sent in rounds[1:]] == ["/slow"] * 3  # it answered last: now it leaves first


async def test_a_backend_uses_a_field_of_an_earlier_one(nursery):
    orders_done: list[float] = []
    orders = await start_upstream(nursery, returning({"id": "o1", "customer_id": "c 7"}, delay=0.1, log=orders_done))
    customers = await start_upstream(nursery, returning({"name": "Ada"}))
    stock = await start_upstream(nursery, returning({"in_stock": True}, delay=0.1))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "orders"
        service = "orders"
        path = "/orders/{id}"
        group = "order"
        [[routes.plugins.aggregate.backends]]
        name = "customer"
        service = "customers"
        path = "/customers/{orders.customer_id}"
        query = { order = "{orders.id}", via = "{query.via}" }
        group = "customer"
        [[routes.plugins.aggregate.backends]]
        name = "stock"
        service = "stock"
        path = "/stock/{id}"
    """,
        path="/agg/{id}",
        orders=orders.url,
        customers=customers.url,
        stock=stock.url,
    )
    r = await get(gw, "/agg/o1?via=a%26b")
    assert r.status_code == 200, r.text
    assert r.json() == {"order": {"id": "o1", "customer_id": "c 7"}, "customer": {"name": "Ada"}, "in_stock": True}
    seen = customers.requests[0]
    assert seen.path == "/customers/c%207"
    assert seen.query == "order=o1&via=a%26b"
    assert seen.at >= orders_done[0]  # the dependant waited for the answer it needed
    assert stock.requests[0].at < orders_done[0]  # the independent backend did not wait


async def test_a_dependency_field_cannot_climb_the_backend_path(nursery):
    first = await start_upstream(nursery, returning({"next": ".."}))
    second = await start_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "a"
        service = "a"
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        path = "/items/{a.next}/x"
        group = "b"
    """,
        a=first.url,
        b=second.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert second.requests[0].path == "/items/%2E%2E/x"


async def test_missing_dependency_field_fails_the_dependant(nursery):
    first = await start_upstream(nursery, returning({"other": 1}))
    second = await start_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "a"
        service = "a"
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        path = "/items/{a.next}"
        required = false
    """,
        a=first.url,
        b=second.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.headers["x-bascule-completed"] == "false"
    assert r.json() == {"other": 1, "errors": [{"backend": "b", "error": "missing_field", "detail": "a.next"}]}
    assert second.requests == []


async def test_a_failed_dependency_fails_its_dependants(nursery):
    first = await start_upstream(nursery, returning({"e": 1}, status=404))
    second = await start_upstream(nursery)
    third = await start_upstream(nursery, returning({"ok": 1}))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "a"
        service = "a"
        required = false
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        path = "/{a.next}"
        required = false
        [[routes.plugins.aggregate.backends]]
        name = "c"
        service = "c"
    """,
        a=first.url,
        b=second.url,
        c=third.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] == 1
    assert r.json()["errors"] == [
        {"backend": "a", "error": "status", "detail": "answered 404"},
        {"backend": "b", "error": "dependency", "detail": "needs 'a', which failed"},
    ]
    assert second.requests == []


# -- shaping, rule by rule --------------------------------------------------------------------

DOC = {
    "id": 7,
    "user": {"name": "Ada", "email": "ada@example.org", "address": {"city": "Lyon", "zip": "69001"}},
    "items": [{"sku": "p1", "price": 3, "secret": "x"}, {"sku": "p2", "price": 4, "secret": "y"}],
}


async def test_group_puts_the_answer_under_a_key(nursery):
    assert await shaped(nursery, {"a": 1}, 'group = "g"') == {"g": {"a": 1}}


async def test_target_takes_a_sub_object(nursery):
    assert await shaped(nursery, DOC, 'target = "user.address"') == {"city": "Lyon", "zip": "69001"}


async def test_missing_target_is_a_failure(nursery):
    up = await start_upstream(nursery, returning(DOC))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        target = "user.phone"
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.status_code == 502
    assert r.json()["errors"] == [{"backend": "b", "error": "missing_field", "detail": "user.phone"}]


async def test_allow_keeps_only_dotted_paths(nursery):
    got = await shaped(nursery, DOC, 'allow = ["id", "user.address.city", "items.sku"]')
    assert got == {"id": 7, "user": {"address": {"city": "Lyon"}}, "items": [{"sku": "p1"}, {"sku": "p2"}]}


async def test_deny_drops_dotted_paths(nursery):
    got = await shaped(nursery, DOC, 'deny = ["user.email", "user.address", "items.secret"]')
    assert got == {"id": 7, "user": {"name": "Ada"}, "items": [{"sku": "p1", "price": 3}, {"sku": "p2", "price": 4}]}


async def test_mapping_renames_fields(nursery):
    got = await shaped(nursery, {"a": 1, "b": 2, "c": 3}, 'mapping = { a = "alpha", b = "c" }')
    assert got == {"alpha": 1, "c": 2}  # a renamed field replaces one that had its new name


async def test_arrays_are_wrapped_as_a_collection(nursery):
    data = [{"id": 1, "x": 0}, {"id": 2, "x": 0}]
    assert await shaped(nursery, data, "") == {"collection": data}
    got = await shaped(nursery, data, 'collection = "rides"\nallow = ["id"]\nmapping = { id = "ride" }\ngroup = "g"')
    assert got == {"g": {"rides": [{"ride": 1}, {"ride": 2}]}}


async def test_a_scalar_answer_goes_under_the_backend_name(nursery):
    assert await shaped(nursery, 42, "") == {"b": 42}


async def test_merge_rule_objects_merge_and_later_backends_win(nursery):
    first = await start_upstream(nursery, returning({"ride": {"id": "r1", "state": "old"}, "n": 1, "only1": True}))
    second = await start_upstream(nursery, returning({"ride": {"state": "new", "eta": 4}, "n": 2}))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "a"
        service = "a"
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
    """,
        a=first.url,
        b=second.url,
    )
    r = await get(gw)
    assert r.json() == {"ride": {"id": "r1", "state": "new", "eta": 4}, "n": 2, "only1": True}


# -- failure policy -----------------------------------------------------------------------------


def nothing_listens() -> str:
    """The URL of a loopback port that refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def two_backends(nursery, *, second_required: bool, second_url: str):
    up = await start_upstream(nursery, returning({"ok": 1}))
    return await gateway(
        nursery,
        f"""
        [[routes.plugins.aggregate.backends]]
        name = "main"
        service = "main"
        [[routes.plugins.aggregate.backends]]
        name = "extra"
        service = "extra"
        group = "extra"
        required = {str(second_required).lower()}
    """,
        main=up.url,
        extra=second_url,
    )


async def test_optional_backend_down_gives_a_partial_answer(nursery):
    gw = await two_backends(nursery, second_required=False, second_url=nothing_listens())
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.headers["x-bascule-completed"] == "false"
    assert r.json() == {"ok": 1, "errors": [{"backend": "extra", "error": "unreachable"}]}
    assert "127.0.0.1" not in r.text


async def test_required_backend_down_is_a_502_problem(nursery):
    gw = await two_backends(nursery, second_required=True, second_url=nothing_listens())
    r = await get(gw)
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["errors"] == [{"backend": "extra", "error": "unreachable"}]
    assert problem["request_id"] == r.headers["x-request-id"]
    assert "127.0.0.1" not in r.text


async def test_non_2xx_answer_is_a_failure(nursery):
    bad = await start_upstream(nursery, returning({"error": "boom"}, status=503))
    gw = await two_backends(nursery, second_required=False, second_url=bad.url)
    r = await get(gw)
    assert r.json() == {"ok": 1, "errors": [{"backend": "extra", "error": "status", "detail": "answered 503"}]}


async def test_single_backend_status_passes_through(nursery):
    up = await start_upstream(nursery, returning({"error": "ride r9 not found"}, status=404))
    gw = await gateway(
        nursery,
        """
        pass_status = true
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        allow = ["error"]
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.status_code == 404
    assert r.json() == {"error": "ride r9 not found"}


async def start_silent_upstream(nursery):
    """A raw TCP server that reads one request head, never answers, and notes when the peer hangs up."""
    seen = SimpleNamespace(received=trio.Event(), closed=trio.Event(), url="")

    async def serve(stream: trio.SocketStream) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            seen.received.set()
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass
        seen.closed.set()

    listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    seen.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    return seen


async def test_slow_backend_fails_at_its_own_deadline(nursery):
    fast = await start_upstream(nursery, returning({"ok": 1}))
    slow = await start_silent_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        timeout = "5s"
        [[routes.plugins.aggregate.backends]]
        name = "fast"
        service = "fast"
        [[routes.plugins.aggregate.backends]]
        name = "slow"
        service = "slow"
        timeout = "200ms"
        required = false
    """,
        fast=fast.url,
        slow=slow.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": 1, "errors": [{"backend": "slow", "error": "timeout"}]}
    assert slow.received.is_set()  # it was called, and the gateway answered without its answer
    with trio.fail_after(5):  # hang guard only
        await slow.closed.wait()  # the abandoned call was closed, not left running


async def test_route_deadline_cancels_backend_calls(nursery):
    slow = await start_silent_upstream(nursery)
    after: list[float] = []
    never = await start_upstream(nursery, returning({}, log=after))
    gw = await gateway(
        nursery,
        """
        timeout = "300ms"
        [[routes.plugins.aggregate.backends]]
        name = "slow"
        service = "slow"
        [[routes.plugins.aggregate.backends]]
        name = "later"
        service = "later"
        path = "/{slow.id}"
    """,
        slow=slow.url,
        later=never.url,
    )
    r = await get(gw)
    assert r.status_code == 504
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"] == [{"backend": "slow", "error": "timeout"}, {"backend": "later", "error": "timeout"}]
    assert slow.received.is_set()
    with trio.fail_after(5):  # hang guard only
        await slow.closed.wait()  # the call did not outlive the request
    assert never.requests == []


async def test_required_failure_cancels_the_other_calls(nursery):
    down = await start_upstream(nursery, returning({"e": 1}, status=500))
    slow = await start_silent_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "slow"
        service = "slow"
        [[routes.plugins.aggregate.backends]]
        name = "down"
        service = "down"
    """,
        slow=slow.url,
        down=down.url,
    )
    r = await get(gw)
    assert r.status_code == 502
    assert r.json()["errors"] == [{"backend": "down", "error": "status", "detail": "answered 500"}]
    with trio.fail_after(5):  # hang guard only
        await slow.closed.wait()


# -- limits and formats ---------------------------------------------------------------------------


async def test_max_response_size_is_enforced_at_the_limit(nursery):
    body = json.dumps({"s": "x" * 91}).encode()  # 100 bytes
    assert len(body) == 100
    up = await start_upstream(nursery, lambda request: _raw(body))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "exact"
        service = "b"
        max_response_size = 100
        group = "exact"
        [[routes.plugins.aggregate.backends]]
        name = "over"
        service = "b"
        max_response_size = 99
        required = false
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "exact": {"s": "x" * 91},
        "errors": [{"backend": "over", "error": "too_large", "detail": "more than 99 bytes"}],
    }


async def _raw(body: bytes, content_type: str = "application/json") -> Response:
    return Response(200, {"content-type": content_type, "content-length": str(len(body))}, body)


async def test_non_json_answers_by_configuration(nursery):
    up = await start_upstream(nursery, returning(b"<html>hi</html>"))
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "as_text"
        service = "b"
        non_json = "string"
        group = "page"
        [[routes.plugins.aggregate.backends]]
        name = "strict"
        service = "b"
        required = false
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.json() == {
        "page": "<html>hi</html>",
        "errors": [{"backend": "strict", "error": "not_json", "detail": "answered text/plain"}],
    }


async def test_invalid_json_is_a_failure(nursery):
    up = await start_upstream(nursery, lambda request: _raw(b'{"a": '))
    gw = await two_backends(nursery, second_required=False, second_url=up.url)
    r = await get(gw)
    assert r.json()["errors"] == [{"backend": "extra", "error": "invalid_json"}]


@pytest.mark.parametrize(("depth", "ok"), [(4, True), (5, False), (200_000, False)])
async def test_json_nesting_depth_is_limited(nursery, depth, ok):
    body = b"[" * depth + b"]" * depth
    up = await start_upstream(nursery, lambda request: _raw(body))
    gw = await gateway(
        nursery,
        """
        max_depth = 4
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        group = "g"
    """,
        b=up.url,
    )
    async with gw.client() as client:
        r = await client.get("/agg")
        if ok:
            assert r.status_code == 200, r.text
            assert r.json() == {"g": {"collection": [[[[]]]]}}
        else:
            assert r.status_code == 502
            assert r.json()["errors"] == [{"backend": "b", "error": "too_deep", "detail": "JSON nested deeper than 4"}]
        up.handler = returning({"fine": True})
        assert (await client.get("/agg")).status_code == 200  # the gateway goes on serving


# -- client inputs ----------------------------------------------------------------------------------


async def test_selected_query_and_headers_are_forwarded(nursery):
    up = await start_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        path = "/users/{id}/{header.x-tenant}"
        forward_query = ["page"]
        headers = ["accept-language"]
    """,
        path="/agg/{id}",
        b=up.url,
    )
    r = await get(
        gw, "/agg/u%201?page=2&secret=s&page=3", headers={"accept-language": "fr", "x-tenant": "acme", "cookie": "c=1"}
    )
    assert r.status_code == 200, r.text
    seen = up.requests[0]
    assert seen.path == "/users/u%201/acme"
    assert seen.query == "page=2&page=3"
    assert seen.header("accept-language") == "fr"
    assert seen.header("cookie") is None
    assert seen.header("x-request-id") == r.headers["x-request-id"]


async def test_missing_client_input_is_a_400_problem(nursery):
    up = await start_upstream(nursery)
    gw = await gateway(
        nursery,
        """
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        query = { q = "{query.q}" }
    """,
        b=up.url,
    )
    r = await get(gw)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "The query parameter 'q' is required."
    assert up.requests == []


async def test_forward_body_sends_the_client_body(nursery):
    up = await start_upstream(nursery)
    other = await start_upstream(nursery, lambda request: _raw(b""))
    gw = await start_gateway(
        nursery,
        services(b=up.url, quiet=other.url)
        + """
        [[routes]]
        name = "agg"
        paths = ["/agg"]
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        method = "POST"
        forward_body = true
        allow = ["method", "body"]
        [[routes.plugins.aggregate.backends]]
        name = "quiet"
        service = "quiet"
    """,
        plugins=[Aggregate],
    )
    async with gw.client() as client:
        r = await client.post("/agg", content=b'{"x": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"method": "POST", "body": '{"x": 1}'}  # an empty answer adds nothing
    assert up.requests[0].header("content-type") == "application/json"
    assert other.requests[0].method == "GET"
    assert other.requests[0].body == b""


class Stamp(Plugin):
    """Stands in for an auth plugin: answers 401 without a token, stamps identity on upstream calls."""

    name = "stamp"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        if ctx.request.headers.get("authorization") != "Bearer t":
            return Response.json({"error": "no token"}, 401)
        return None

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        request.headers.set("x-consumer-id", "c1")

    @hookimpl
    async def on_log(self, ctx: Context) -> None:
        if Stamp.log is not None:
            Stamp.log.send_nowait((ctx.upstream_seconds, time.perf_counter() - ctx.started))

    log: ClassVar[trio.MemorySendChannel | None] = None  # where on_log reports, if a test listens


async def test_other_plugins_compose_with_an_aggregated_route(nursery):
    ups = [await start_upstream(nursery, returning({"ok": 1}, delay=0.1)) for _ in range(2)]
    Stamp.log, logged = trio.open_memory_channel(10)
    gw = await start_gateway(
        nursery,
        services(a=ups[0].url, b=ups[1].url)
        + """
        [[routes]]
        name = "agg"
        paths = ["/agg"]
        [routes.plugins.stamp]
        [[routes.plugins.aggregate.backends]]
        name = "a"
        service = "a"
        group = "a"
        [[routes.plugins.aggregate.backends]]
        name = "b"
        service = "b"
        group = "b"
    """,
        plugins=[Aggregate, Stamp],
    )
    async with gw.client() as client:
        refused = await client.get("/agg")
        r = await client.get("/agg", headers={"authorization": "Bearer t"})
    assert refused.status_code == 401
    assert r.status_code == 200, r.text
    assert [len(up.requests) for up in ups] == [1, 1]  # the refused request reached no backend
    assert [up.requests[0].header("x-consumer-id") for up in ups] == ["c1", "c1"]
    with trio.fail_after(5):  # hang guard only: on_log runs after the answer is sent
        await logged.receive()  # the refused request
        upstream_seconds, total_seconds = await logged.receive()
    assert upstream_seconds is not None
    assert upstream_seconds <= total_seconds  # concurrent calls are not added up


async def test_the_cache_keeps_complete_answers_only(nursery):
    pytest.importorskip("bascule_cache")
    main = await start_upstream(nursery, returning({"ok": 1}))
    extra = await start_upstream(nursery, returning({"e": 1}))
    gw = await start_gateway(
        nursery,
        services(main=main.url, extra=extra.url)
        + """
        [[routes]]
        name = "agg"
        paths = ["/agg"]
        [routes.plugins.cache]
        [routes.plugins.aggregate]
        cache_control = "public, max-age=60"
        [[routes.plugins.aggregate.backends]]
        name = "main"
        service = "main"
        [[routes.plugins.aggregate.backends]]
        name = "extra"
        service = "extra"
        group = "extra"
        required = false
    """,
        plugins=[Aggregate],
    )
    async with gw.client() as client:
        first, second = await client.get("/agg"), await client.get("/agg")
        assert first.headers["cache-control"] == "public, max-age=60"
        assert second.json() == first.json() == {"ok": 1, "extra": {"e": 1}}
        assert (len(main.requests), len(extra.requests)) == (1, 1)  # the second came from the cache

        extra.handler = returning({}, status=503)
        first, second = await client.get("/agg?partial"), await client.get("/agg?partial")
        assert first.headers["x-bascule-completed"] == second.headers["x-bascule-completed"] == "false"
        assert first.headers["cache-control"] == "no-store"
        assert (len(main.requests), len(extra.requests)) == (3, 3)  # a partial answer is not kept


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("", "backends: required key is missing"),
        (
            'pass_status = true\n[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\n'
            '[[routes.plugins.aggregate.backends]]\nname = "b"\nservice = "s"',
            "pass_status: only a route with a single backend can pass its status through",
        ),
        (
            '[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\npath = "/{b.id}"\n'
            '[[routes.plugins.aggregate.backends]]\nname = "b"\nservice = "s"',
            "backends[0]: a placeholder {b.…} must name a backend listed before 'a'",
        ),
        (
            '[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\nallow = ["x"]\ndeny = ["y"]',
            "allow and deny cannot be combined",
        ),
        (
            'timeout = "1s"\n[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\ntimeout = "2s"',
            "backends[0].timeout: 2s is longer than the route's timeout (1s)",
        ),
        (
            '[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\npath = "/{x"',
            "path: unbalanced brace in '/{x'",
        ),
        (
            '[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"\npath = "/a b/{x}"',
            "path: '/a b/{x}' has characters that must be percent-encoded",
        ),
        (
            '[[routes.plugins.aggregate.backends]]\nname = "query"\nservice = "s"',
            "backends[0].name: expected a name of letters, digits and _ (not a digit first), "
            "other than 'query' and 'header', got 'query'",
        ),
        (
            'max_depth = 1000\n[[routes.plugins.aggregate.backends]]\nname = "a"\nservice = "s"',
            "max_depth: must be between 1 and 256, got 1000",
        ),
    ],
)
async def test_invalid_settings_are_config_errors(nursery, settings, message):
    with pytest.raises(ConfigError) as e:
        await gateway(nursery, settings, s="http://127.0.0.1:1")
    assert message in str(e.value)
    assert 'route "agg"' in str(e.value) or "route 'agg'" in str(e.value)
