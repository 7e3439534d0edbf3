"""Balancing, retries and upstream errors, against real upstream servers."""

import socket
from collections import Counter

import httpx
import pytest
import trio
import trio.testing
from bascule import upstream
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Response


async def until(condition, timeout: float = 10) -> None:
    """Wait for ``condition()`` (a guard against a hang, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


_bound: list[socket.socket] = []


def dead_url() -> str:
    """A loopback URL that refuses connections: its port is bound (so no other
    process takes it) but not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _bound.append(s)
    return f"http://127.0.0.1:{s.getsockname()[1]}"


def service(targets: str, **settings: object) -> str:
    extra = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {str(v).lower()}" for k, v in settings.items())
    return f"""
        [services.api]
        targets = [{targets}]
        {extra}
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
    """


async def run_concurrently(
    client: httpx.AsyncClient, paths: list[str], tasks: int = 10, method: str = "GET"
) -> list[httpx.Response]:
    """Send every path, ``tasks`` at a time; return the responses in order."""
    responses: list[httpx.Response] = [None] * len(paths)  # type: ignore[list-item]
    todo = iter(enumerate(paths))

    async def worker() -> None:
        for i, path in todo:
            responses[i] = await client.request(method, path)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return responses


def which(upstreams: list, path_prefix: str = "") -> Counter:
    return Counter({i: sum(r.path.startswith(path_prefix) for r in u.requests) for i, u in enumerate(upstreams)})


def assert_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_weighted_round_robin_spreads_1000_requests_by_weight(nursery):
    ups = [await start_upstream(nursery) for _ in range(3)]
    targets = ", ".join(f'{{ url = "{u.url}", weight = {w} }}' for u, w in zip(ups, (1, 3, 6), strict=True))
    gw = await start_gateway(nursery, service(targets))
    async with gw.client(timeout=30) as client:
        responses = await run_concurrently(client, ["/x"] * 1000)
    assert all(r.status_code == 200 for r in responses)
    counts = [len(u.requests) for u in ups]
    for count, expected in zip(counts, (100, 300, 600), strict=True):
        assert abs(count - expected) <= 0.05 * 1000, counts


async def test_least_requests_avoids_the_busy_target(nursery):
    release = trio.Event()

    async def handler(request):
        if request.path == "/slow":
            await release.wait()
        return Response(200, body=b"ok")

    ups = [await start_upstream(nursery, handler) for _ in range(2)]
    gw = await start_gateway(nursery, service(", ".join(f'"{u.url}"' for u in ups), balance="least-requests"))
    async with gw.client(timeout=30) as client, trio.open_nursery() as requests:
        requests.start_soon(client.get, "/slow")
        await until(lambda: any(u.requests for u in ups))
        busy = 0 if ups[0].requests else 1
        for _ in range(20):
            assert (await client.get("/fast")).status_code == 200
        release.set()
    assert [r.path for r in ups[busy].requests] == ["/slow"]
    assert len(ups[1 - busy].requests) == 20


async def test_hash_balancing_is_sticky_and_moves_only_the_keys_of_a_lost_target(nursery):
    ups = [await start_upstream(nursery) for _ in range(3)]
    gw = await start_gateway(
        nursery,
        service(
            ", ".join(f'"{u.url}"' for u in ups), balance="hash", hash_on="header:x-user", max_failures=1, cool_off="1m"
        ),
    )

    def owner(user: str) -> set[int]:
        return {i for i, u in enumerate(ups) for r in u.requests if r.path == f"/{user}"}

    users = [f"user{i}" for i in range(30)]
    async with gw.client(timeout=30) as client:
        for user in users * 3:
            assert (await client.get(f"/{user}", headers={"x-user": user})).status_code == 200
        before = {user: owner(user) for user in users}
        assert all(len(t) == 1 for t in before.values())  # sticky
        assert len(set().union(*before.values())) == 3  # and spread
        lost = next(iter(before["user0"]))
        ups[lost].stop.set()
        await trio.testing.wait_all_tasks_blocked(0.05)  # stopped: its idle connections are closed too
        for u in ups:
            u.requests.clear()
        for user in users:
            assert (await client.get(f"/{user}", headers={"x-user": user})).status_code == 200
    for user in users:
        if before[user] == {lost}:
            assert owner(user) and owner(user) != {lost}
        else:
            assert owner(user) == before[user]  # keys of the other targets stayed put


async def test_a_target_killed_mid_run_is_ejected_and_no_request_fails(nursery):
    ups = [await start_upstream(nursery) for _ in range(3)]
    gw = await start_gateway(nursery, service(", ".join(f'"{u.url}"' for u in ups), max_failures=3, cool_off="1m"))
    victim = ups[1]

    async def handler(request):
        if len(victim.requests) == 30:
            victim.stop.set()  # dies after answering this one
        return Response.json({"ok": True})

    victim.handler = handler
    async with gw.client(timeout=30) as client:
        responses = await run_concurrently(client, ["/x"] * 300)
    assert [r.status_code for r in responses] == [200] * 300
    health = gw.gateway.runtime.upstreams["api"].describe()["targets"]
    assert [t["state"] for t in health] == ["healthy", "ejected", "healthy"]
    assert health[1]["ejections"] == 1
    assert len(victim.requests) >= 30


async def test_without_panic_mode_all_targets_down_answers_503_at_once(nursery):
    async def never_answer(stream):
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, never_answer, listeners)
    hung = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    gw = await start_gateway(
        nursery, service(f'"{hung}", "{dead_url()}"', timeout="300ms", max_failures=1, cool_off="1m", panic_threshold=0)
    )
    async with gw.client(timeout=30) as client:
        first = [await client.get("/x") for _ in range(2)]  # one times out, one is refused
        # Both targets are now ejected: another attempt on the hung one would be a 504 after
        # the timeout, so the status shows the gateway did not try it.
        after = [await client.get("/x") for _ in range(5)]
    assert sorted(r.status_code for r in first) == [502, 504]
    for r in after:
        assert_problem(r, 503)
        assert "no healthy target" in r.json()["detail"]
        assert 55 <= int(r.headers["retry-after"]) <= 60


async def test_timeout_is_504_and_refused_connection_is_502(nursery):
    async def slow(request):
        await trio.sleep(5)
        return Response(200)

    upstream = await start_upstream(nursery, slow)
    gw = await start_gateway(
        nursery,
        f"""
        [services.slow]
        targets = ["{upstream.url}"]
        timeout = "200ms"
        [services.down]
        targets = ["{dead_url()}"]
        [[routes]]
        name = "slow"
        paths = ["/slow"]
        service = "slow"
        [[routes]]
        name = "down"
        paths = ["/down"]
        service = "down"
    """,
    )
    async with gw.client(timeout=30) as client:
        assert_problem(await client.get("/slow"), 504)
        assert_problem(await client.get("/down"), 502)
    assert len(upstream.requests) == 1  # a timeout is not retried


async def test_retry_on_status_moves_idempotent_requests_to_another_target(nursery):
    async def unavailable(request):
        return Response(503, body=b"down")

    bad = await start_upstream(nursery, unavailable)
    good = await start_upstream(nursery)
    gw = await start_gateway(nursery, service(f'"{bad.url}", "{good.url}"', max_failures=0))
    async with gw.client(timeout=30) as client:
        gets = [await client.get("/x") for _ in range(10)]
        posts = [await client.post("/x", content=b"data") for _ in range(10)]
    assert [r.status_code for r in gets] == [200] * 10
    assert len(good.requests) == 10 + 5 and len(bad.requests) == 10 + 5
    # POST is not idempotent: the upstream's 503 reaches the client unchanged.
    assert sorted(r.status_code for r in posts) == [200] * 5 + [503] * 5
    assert {r.text for r in posts if r.status_code == 503} == {"down"}


async def test_refused_connections_are_retried_within_the_budget(nursery):
    good = await start_upstream(nursery)
    down = dead_url()
    generous = await start_gateway(nursery, service(f'"{down}", "{good.url}"', max_failures=0))
    broke = await start_gateway(
        nursery, service(f'"{down}", "{good.url}"', max_failures=0, retry_budget=0, retry_budget_min=0)
    )
    async with generous.client(timeout=30) as client:
        ok = [(await client.post("/x", content=b"x")).status_code for _ in range(20)]
    async with broke.client(timeout=30) as client:
        limited = [(await client.get("/x")).status_code for _ in range(20)]
    assert ok == [200] * 20  # a refused connection sent nothing: safe to retry even a POST
    assert sorted(limited) == [200] * 10 + [502] * 10, limited
    assert broke.gateway.runtime.upstreams["api"].describe()["retries_refused"] == 10


async def test_an_ejected_target_gets_one_trial_after_its_cool_off(nursery):
    healthy = False

    async def handler(request):
        return Response(200 if healthy else 502)

    flaky, steady = await start_upstream(nursery, handler), await start_upstream(nursery)
    # Two targets: a service's only target is never ejected (see test_health.py).
    gw = await start_gateway(
        nursery, service(f'"{flaky.url}", "{steady.url}"', max_failures=2, cool_off="500ms", retries=0)
    )
    svc = gw.gateway.runtime.upstreams["api"]
    async with gw.client(timeout=30) as client:
        statuses = [(await client.get("/x")).status_code for _ in range(6)]
        assert statuses == [502, 200, 502, 200, 200, 200]  # round-robin until flaky is ejected
        assert svc.describe()["targets"][0]["state"] == "ejected"
        await trio.sleep(0.6)
        assert svc.describe()["targets"][0]["state"] == "half-open"
        statuses = [(await client.get("/x")).status_code for _ in range(3)]
        assert statuses == [502, 200, 200]  # the trial fails: ejected again
        await trio.sleep(0.6)
        healthy = True
        assert [(await client.get("/x")).status_code for _ in range(4)] == [200] * 4
    assert len(flaky.requests) == 2 + 1 + 2  # the trial passes: round-robin again
    assert svc.describe()["targets"][0]["state"] == "healthy"
    assert svc.describe()["targets"][0]["ejections"] == 2


async def test_active_health_checks_take_a_target_out_and_bring_it_back(nursery):
    sick = True

    async def handler(request):
        if request.path == "/health":
            return Response(500 if sick else 200)
        return Response(200, body=b"served")

    ups = [await start_upstream(nursery, handler), await start_upstream(nursery)]
    gw = await start_gateway(
        nursery,
        service(
            f'"{ups[0].url}", "{ups[1].url}"',
            health_path="/health",
            health_interval="50ms",
            healthy_threshold=2,
            unhealthy_threshold=2,
        ),
    )
    svc = gw.gateway.runtime.upstreams["api"]
    svc.start(nursery.start_soon)  # the gateway does this at startup; idempotent

    def state() -> str:
        return svc.describe()["targets"][0]["state"]

    await until(lambda: state() == "unhealthy")
    async with gw.client(timeout=30) as client:
        served = [await client.get("/x") for _ in range(10)]
        assert all(r.status_code == 200 for r in served)
        assert not [r for r in ups[0].requests if r.path == "/x"]
        sick = False
        await until(lambda: state() == "healthy")
        for _ in range(10):
            await client.get("/y")
    assert len([r for r in ups[0].requests if r.path == "/y"]) == 5
    assert ups[0].requests[0].header("user-agent") == "bascule-health-check"


async def raw_server(nursery: trio.Nursery, payload: bytes) -> str:
    """A socket server that answers every connection with ``payload``, then closes it."""

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(payload)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, answer, listeners)
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.mark.parametrize(
    "head, body",
    [
        (b"content-length: 100000", b"a" * 5000),
        (b"transfer-encoding: chunked", b"1000\r\n" + b"b" * 4096 + b"\r\n"),
    ],
)
async def test_an_upstream_closing_mid_body_aborts_the_client_connection(nursery, head, body):
    url = await raw_server(nursery, b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n" + body)
    gw = await start_gateway(nursery, '[gateway]\nbuffer_size = "1KiB"\n' + service(f'"{url}"', max_failures=0))
    async with gw.client(timeout=30) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/x")  # streamed: the client sees the connection cut, not an end


async def test_a_short_buffered_body_is_a_502(nursery):
    url = await raw_server(nursery, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 50)
    gw = await start_gateway(nursery, service(f'"{url}"', max_failures=0))
    async with gw.client(timeout=30) as client:
        assert_problem(await client.get("/x"), 502)


class FakeTarget:
    def __init__(self, name: str, weight: int = 1) -> None:
        self.url, self.weight, self.in_use = name, weight, 0
        self.up = True
        self.health = self

    def available(self, now: float) -> bool:
        return self.up


def test_smooth_round_robin_interleaves_by_weight_and_skips_unavailable_targets():
    from bascule.upstream.balancing import RoundRobin

    a, b, c = FakeTarget("a", 5), FakeTarget("b"), FakeTarget("c")
    rr = RoundRobin([a, b, c])
    assert "".join(rr.pick(0, None, ()).url for _ in range(14)) == "aabacaa" * 2
    b.up = False
    assert "".join(rr.pick(0, None, ()).url for _ in range(6)) == "aaacaa"
    assert rr.pick(0, None, (a, c)) is None


@pytest.mark.parametrize("kind", ["round-robin", "least-requests", "hash"])
def test_in_panic_mode_every_balancer_picks_unavailable_targets_but_not_tried_ones(kind):
    from bascule.upstream.balancing import make_balancer

    targets = [FakeTarget(name) for name in "abcd"]
    for t in targets[1:]:
        t.up = False
    balancer = make_balancer(kind, targets)
    keys = [f"user{i}" if kind == "hash" else None for i in range(200)]
    assert {balancer.pick(0, key, ()).url for key in keys} == {"a"}
    assert {balancer.pick(0, key, (), panic=True).url for key in keys} == {"a", "b", "c", "d"}
    assert balancer.pick(0, keys[0], targets[:3], panic=True) is targets[3]
    assert balancer.pick(0, keys[0], targets, panic=True) is None


def test_the_retry_budget_is_a_share_of_recent_requests():
    from bascule.upstream.retries import RetryBudget

    budget = RetryBudget(ratio=0.1, min_per_second=0)
    for _ in range(100):
        budget.request(5.0)
    granted = 0
    while budget.allows(5.5):
        budget.spend(5.5)
        granted += 1
    assert granted == 10 and budget.refused == 1
    assert not budget.allows(14.9)  # the same 10 s window
    for _ in range(10):
        budget.request(15.1)
    assert budget.allows(15.1)  # the old requests and retries have left the window


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


async def h2_get(url: str, path: str) -> list[tuple[int, list[tuple[bytes, bytes]]]]:
    """GET over cleartext HTTP/2 (prior knowledge): every response head, interim ones included, in order."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", url[7:])], True)
    heads: list[tuple[int, list[tuple[bytes, bytes]]]] = []
    with trio.fail_after(10):
        await stream.send_all(conn.data_to_send())
        while True:
            data = await stream.receive_some(65536)
            assert data, heads
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.InformationalResponseReceived | h2.events.ResponseReceived):
                    fields = [(bytes(k), bytes(v)) for k, v in event.headers]
                    heads.append((int(dict(fields)[b":status"]), [f for f in fields if not f[0].startswith(b":")]))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    await stream.aclose()
                    return heads
            await stream.send_all(conn.data_to_send())


@pytest.mark.skipif(upstream.CLIENT == "httpcore", reason="httpcore drops interim responses")
async def test_103_early_hints_reach_http2_clients_and_100_continue_stops_at_the_gateway(nursery):
    final = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    url = await raw_server(nursery, b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS + final)
    gw = await start_gateway(nursery, service(f'"{url}"'))
    heads = await h2_get(gw.url, "/x")
    assert [status for status, _ in heads] == [103, 200]
    assert heads[0][1] == [(b"link", b"</style.css>; rel=preload")]


async def test_over_http1_early_hints_are_not_sent_and_the_response_is_whole(nursery):
    # hypercorn 0.18 offers http.response.early_hint for HTTP/2 and 3 only.
    url = await raw_server(nursery, EARLY_HINTS + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    gw = await start_gateway(nursery, service(f'"{url}"'))
    host, port = gw.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok"), answer
    assert b"103" not in answer.split(b"\r\n")[0] and b"style.css" not in answer
