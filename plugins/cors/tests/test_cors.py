"""CORS over real sockets: a real upstream, the gateway, an HTTP client acting as a browser."""

import dataclasses
import re
from pathlib import Path

import pytest
from bascule.config import ConfigError, parse_config
from bascule.registry import discover
from bascule.testing import start_gateway, start_upstream
from bascule_cors import CORS
from bascule_sdk import Response

APP = "https://app.example.com"


def config(upstream_url: str, cors_table: str) -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]

        [[routes]]
        name = "api"
        paths = ["/api"]
        methods = ["GET", "POST", "DELETE", "OPTIONS"]
        service = "api"
        [routes.plugins.cors]
        {cors_table}

        [[routes]]
        name = "plain"
        paths = ["/plain"]
        service = "api"
    """


def preflight(method: str = "POST", origin: str = APP, headers: str | None = None) -> dict[str, str]:
    h = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        h["access-control-request-headers"] = headers
    return h


async def test_preflight_is_answered_at_the_gateway(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            f"""
        origins = ["{APP}"]
        headers = ["Content-Type", "X-Trace"]
        max_age = "10m"
    """,
        ),
        plugins=[CORS],
    )
    async with gw.client() as client:
        r = await client.options("/api/orders", headers=preflight("POST", headers="content-type, x-trace"))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-methods"] == "POST"
    assert r.headers["access-control-allow-headers"] == "content-type, x-trace"
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in r.headers["vary"].lower()
    assert "access-control-allow-credentials" not in r.headers
    assert upstream.requests == []  # never reached the service


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (preflight(origin="https://evil.example.net"), "Origin https://evil.example.net is not allowed"),
        (preflight(method="PUT"), "Method PUT is not allowed"),
        (preflight(headers="x-trace, x-secret"), "x-secret"),
    ],
)
async def test_refused_preflight_is_403_without_cors_headers(nursery, headers, detail):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            f"""
        origins = ["{APP}"]
        methods = ["GET", "POST"]
        headers = ["x-trace"]
    """,
        ),
        plugins=[CORS],
    )
    async with gw.client() as client:
        r = await client.options("/api/orders", headers=headers)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]
    assert "access-control-allow-origin" not in r.headers
    assert upstream.requests == []


async def test_actual_request_from_allowed_origin_gets_cors_headers(nursery):
    async def service(request):
        # A service with its own (conflicting) CORS answer: the gateway's wins.
        return Response(
            200,
            {"access-control-allow-origin": "*", "vary": "Accept-Encoding", "x-total": "3", "content-length": "2"},
            b"[]",
        )

    upstream = await start_upstream(nursery, service)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            f"""
        origins = ["{APP}"]
        credentials = true
        expose_headers = ["X-Total"]
    """,
        ),
        plugins=[CORS],
    )
    async with gw.client() as client:
        r = await client.get("/api/orders", headers={"origin": APP, "cookie": "session=1"})
    assert r.status_code == 200
    assert r.headers.get_list("access-control-allow-origin") == [APP]
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "X-Total"
    assert r.headers["vary"] == "Accept-Encoding, Origin"
    assert upstream.requests[0].header("cookie") == "session=1"


async def test_request_from_other_origin_is_proxied_without_cors_headers(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, f'origins = ["{APP}"]'), plugins=[CORS])
    async with gw.client() as client:
        other = await client.get("/api/orders", headers={"origin": "https://evil.example.net"})
        same_origin = await client.get("/api/orders")  # no Origin: not a CORS request
    for r in (other, same_origin):
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["vary"] == "Origin"
    assert len(upstream.requests) == 2  # the browser, not the gateway, enforces CORS on simple requests


async def test_any_origin_without_credentials_answers_star(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, ""), plugins=[CORS])
    async with gw.client() as client:
        r = await client.get("/api/x", headers={"origin": "https://anyone.example.org"})
        pre = await client.options("/api/x", headers=preflight("DELETE", origin="https://anyone.example.org"))
    assert r.headers["access-control-allow-origin"] == "*"
    assert "vary" not in r.headers  # the answer is the same for every origin
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"


async def test_subdomain_wildcard(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'origins = ["https://*.example.com"]'), plugins=[CORS])
    async with gw.client() as client:
        sub = await client.get("/api/x", headers={"origin": "https://shop.example.com"})
        apex = await client.get("/api/x", headers={"origin": "https://example.com"})
        http = await client.get("/api/x", headers={"origin": "http://shop.example.com"})
        lookalike = await client.get("/api/x", headers={"origin": "https://shopexample.com"})
    assert sub.headers["access-control-allow-origin"] == "https://shop.example.com"
    for r in (apex, http, lookalike):
        assert "access-control-allow-origin" not in r.headers


async def test_cors_headers_on_errors_of_the_route(nursery):
    async def failing(request):
        return Response.json({"error": "down"}, 503)

    upstream = await start_upstream(nursery, failing)
    gw = await start_gateway(nursery, config(upstream.url, f'origins = ["{APP}"]'), plugins=[CORS])
    async with gw.client() as client:
        r = await client.get("/api/x", headers={"origin": APP})
    assert r.status_code == 503
    assert r.headers["access-control-allow-origin"] == APP  # the page can read the error


async def test_only_on_its_route(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, ""), plugins=[CORS])
    async with gw.client() as client:
        r = await client.get("/plain/x", headers={"origin": APP})
        pre = await client.options("/plain/x", headers=preflight())
    assert "access-control-allow-origin" not in r.headers
    assert pre.status_code == 200  # no CORS here: the OPTIONS request went to the service
    assert "access-control-allow-origin" not in pre.headers
    assert [q.method for q in upstream.requests] == ["GET", "OPTIONS"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("credentials = true", "credentials: true needs explicit origins"),
        (
            'origins = ["app.example.com"]',
            "origins\\[0\\]: expected \"\\*\" or an origin like .*, got 'app.example.com'",
        ),
        ('methods = ["GET", "GET POST"]', "methods\\[1\\]: expected a method or \"\\*\", got 'GET POST'"),
        ('headers = ["x trace"]', "headers\\[0\\]: expected a header name .*, got 'x trace'"),
        ('max_age = "soon"', "expected a duration"),
    ],
)
async def test_invalid_settings_are_config_errors(nursery, table, message):
    with pytest.raises(ConfigError, match=message) as e:
        await start_gateway(nursery, config("http://127.0.0.1:9", table), plugins=[CORS])
    assert 'route "api": plugins.cors' in str(e.value)


def test_readme_documents_every_setting_and_its_example_is_valid():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for f in dataclasses.fields(CORS.Settings):
        if f.init:
            assert f"| `{f.name}` |" in readme, f"README.md does not document {f.name}"
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    service = '[services.orders]\ntargets = ["http://127.0.0.1:9"]\n'
    parse_config(service + example, "plugins.toml", discover([CORS], entry_points=False))
