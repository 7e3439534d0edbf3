"""Hostile clients and failing upstreams: each case over a real socket, checking the
client's answer and what the upstream received."""

import re
import string
from functools import partial

import httpx
import pytest
import trio
from bascule import ConfigError, parse_config
from bascule.registry import discover
from bascule.testing import raw_exchange, start_gateway, start_upstream
from bascule_sdk import Headers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def config(url: str, timeout: str = "2s") -> str:
    return f"""
        [services.api]
        targets = ["{url}"]
        timeout = "{timeout}"
        read_timeout = "{timeout}"
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
    """


def statuses(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


SMUGGLING = {
    "content-length with transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "duplicate content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    "obfuscated transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding list": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "signed content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    "NUL in a header": b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n",
    "CR in a header": b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n",
    "two Host fields": b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no Host": b"GET /a HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("name", SMUGGLING)
async def test_ambiguous_framing_is_rejected_and_never_forwarded(nursery, name):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    data = await raw_exchange(gw.url, SMUGGLING[name])
    # The answer is 400/501 and the connection closes; when the client has pipelined more
    # bytes, closing may reset the connection before the answer arrives.
    assert statuses(data) in ([400], [501]) or (data == b"" and name.startswith("content-length"))
    assert upstream.requests == []


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /a HTTP/1.1\nHost: a\n\n",  # bare LF line endings
        b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",  # obsolete line folding
    ],
)
async def test_lenient_syntax_is_forwarded_as_exactly_one_clean_request(nursery, payload):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    data = await raw_exchange(gw.url, payload)
    assert statuses(data) == [200]
    assert [(r.method, r.path) for r in upstream.requests] == [("GET", "/a")]
    assert all("\n" not in v and "\r" not in v for _, v in upstream.requests[0].headers)


async def test_absolute_form_target_uses_its_authority_as_host(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url))
    data = await raw_exchange(gw.url, b"GET http://shop.example/a HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert statuses(data) == [200]
    (seen,) = upstream.requests
    assert (seen.path, seen.header("x-forwarded-host")) == ("/a", "shop.example")


async def test_unknown_hosts_are_rejected_unless_a_default_route_exists(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "shop"
        paths = ["/"]
        hosts = ["shop.example"]
        service = "api"
    """,
    )
    async with gw.client() as client:
        known = await client.get("/", headers={"host": "shop.example"})
        unknown = await client.get("/", headers={"host": "evil.example"})
    assert (known.status_code, unknown.status_code) == (200, 404)
    assert len(upstream.requests) == 1


def test_header_values_cannot_be_split():
    headers = Headers()
    for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b", b"a\rb", b"a\nb", b"\0"):
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            headers.set("x-consumer-username", bad)
    assert len(headers) == 0


class RawUpstream:
    """A TCP server that answers every connection with fixed bytes (then waits or closes)."""

    def __init__(self, response: bytes, hang: bool = False) -> None:
        self.response, self.hang, self.connections = response, hang, 0

    async def serve(self, nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1"))
        return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    async def handle(self, stream):
        self.connections += 1
        await stream.receive_some()
        await stream.send_all(self.response)
        if self.hang:
            await trio.sleep_forever()
        await stream.aclose()


@pytest.mark.parametrize(
    ("name", "response", "hang", "status"),
    [
        ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n", False, 502),
        ("bad status line", b"HTTP/1.1 twohundred OK\r\n\r\n", False, 502),
        ("huge header", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", False, 502),
        ("closed before answering", b"", False, 502),
        ("hangs after the head", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True, 504),
    ],
)
async def test_a_broken_upstream_gets_a_defined_answer(nursery, name, response, hang, status):
    raw = RawUpstream(response, hang)
    url = await raw.serve(nursery)
    healthy = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(url, timeout="500ms")
        + f"""
        [services.ok]
        targets = ["{healthy.url}"]
        [[routes]]
        name = "ok"
        paths = ["/ok"]
        service = "ok"
    """,
    )
    async with gw.client(timeout=10) as client:
        broken = await client.get("/x")
        fine = await client.get("/ok")  # the gateway keeps serving others
    assert broken.status_code == status, name
    assert broken.json()["request_id"] == broken.headers["x-request-id"]
    assert fine.status_code == 200


async def test_upstream_cut_mid_body_aborts_the_client_connection(nursery):
    raw = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
    url = await raw.serve(nursery)
    gw = await start_gateway(nursery, config(url))
    async with gw.client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", "/big") as r:
                assert r.status_code == 200
                async for _ in r.aiter_raw():
                    pass


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(string.printable, max_size=12)
    | st.sampled_from(["api", "/a", "5s", "GET", "prefix"])
)
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "url", "weight", "limit", "plugin", "priority", "x-y"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "listen",
        "targets",
        "timeout",
        "paths",
        "service",
        "methods",
        "plugins",
        "name",
        "match",
        "hosts",
        "strip_path",
        "workers",
        "trusted_proxies",
        "groups",
        "credentials",
        "junk",
    ]
)
SECTION = st.dictionaries(KEYS, TOML_VALUES, max_size=5)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "gateway": SECTION,
        "services": st.dictionaries(st.sampled_from(["api", "users"]), SECTION, max_size=2),
        "routes": st.lists(SECTION, max_size=3) | SCALARS,
        "plugins": st.dictionaries(st.sampled_from(["tag", "jwt"]), TOML_VALUES, max_size=2),
        "consumers": st.dictionaries(st.sampled_from(["ada"]), SECTION, max_size=1),
        "extra": SCALARS,
    },
)


def _available():
    from bascule_sdk import Plugin, hookimpl

    class Tag(Plugin):
        name = "tag"

        @hookimpl
        async def on_request(self, ctx):
            return None

    return discover([Tag], entry_points=False)


AVAILABLE = _available()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENT)
def test_any_config_document_is_valid_or_a_clean_error(data):
    from bascule.config import compile_config
    from bascule.runtime import check_config

    try:
        check_config(compile_config(data, "fuzz.toml", AVAILABLE), AVAILABLE)
    except ConfigError as e:
        assert e.lines and all(line.startswith("fuzz.toml: ") for line in e.lines)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_valid_or_a_clean_error(text):
    try:
        parse_config(text, "fuzz.toml", AVAILABLE)
    except ConfigError as e:  # the file, and for a syntax error the line and column
        assert e.lines and all(re.match(r"fuzz\.toml(:\d+:\d+)?: ", line) for line in e.lines)


async def test_upstream_header_names_are_case_insensitive(nursery):
    # Real servers send "Content-Length", "Connection": hygiene must not depend on the case.
    raw = RawUpstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Private\r\nX-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nX-Public: yes\r\n\r\nok"
    )
    url = await raw.serve(nursery)
    gw = await start_gateway(nursery, config(url))
    async with gw.client() as client:
        r = await client.get("/x")
    assert (r.status_code, r.content, r.headers["x-public"]) == (200, b"ok", "yes")
    assert "x-private" not in r.headers and "keep-alive" not in r.headers


async def test_a_reload_storm_loses_no_request(nursery):
    upstream = await start_upstream(nursery)
    base = config(upstream.url)
    gw = await start_gateway(nursery, base)
    statuses: list[int] = []

    async def client_loop(client):
        for _ in range(40):
            statuses.append((await client.get("/x")).status_code)

    async with gw.client() as client, trio.open_nursery() as load:
        for _ in range(8):
            load.start_soon(client_loop, client)
        for i in range(50):
            await gw.reload(
                base
                + f"""
                [[routes]]
                name = "extra{i}"
                paths = ["/extra{i}"]
                service = "api"
            """
            )
            await trio.sleep(0.01)
    assert len(statuses) == 320
    assert set(statuses) == {200}
    async with gw.client() as client:
        assert (await client.get("/extra49/y")).status_code == 200


async def test_unkeyed_forwarding_headers_cannot_poison_the_cache(nursery):
    # A typical origin builds absolute links from X-Forwarded-Host/-Proto. An untrusted
    # client's copies are replaced on arrival, so the stored answer is the honest one.
    from bascule_sdk import Response

    async def origin(request):
        link = f"{request.header('x-forwarded-proto')}://{request.header('x-forwarded-host')}/next"
        return Response.json({"next": link}, headers={"cache-control": "public, max-age=60"})

    upstream = await start_upstream(nursery, origin)
    gw = await start_gateway(nursery, config(upstream.url) + "[routes.plugins.cache]\n")
    async with gw.client() as client:
        attack = await client.get(
            "/page",
            headers={
                "host": "shop.example",
                "x-forwarded-host": "evil.example",
                "x-forwarded-proto": "javascript",
                "forwarded": "host=evil.example;proto=https",
            },
        )
        victim = await client.get("/page", headers={"host": "shop.example"})
    assert attack.json() == {"next": "http://shop.example/next"}
    assert (victim.headers["x-cache-status"], victim.json()) == ("HIT", {"next": "http://shop.example/next"})
    assert len(upstream.requests) == 1


async def test_compressed_backend_answers_are_not_inflated_by_aggregation(nursery):
    # A gzip body is never decompressed by the gateway (no zip bomb can expand in it):
    # for the aggregator it is not JSON, which is a failure of that backend.
    import gzip

    from bascule_sdk import Response

    bomb = gzip.compress(b"[" * 1_000_000)

    async def backend(request):
        return Response(200, {"content-type": "application/json", "content-encoding": "gzip"}, bomb)

    upstream = await start_upstream(nursery, backend)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "agg"
        paths = ["/agg"]
        [routes.plugins.aggregate]
        [[routes.plugins.aggregate.backends]]
        name = "packed"
        service = "api"
        path = "/x"
    """,
    )
    async with gw.client() as client:
        r = await client.get("/agg")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["backend"] for e in r.json()["errors"]] == ["packed"]
