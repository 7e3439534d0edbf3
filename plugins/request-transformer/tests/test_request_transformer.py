"""request-transformer over real sockets: what the upstream receives, route by route."""

import dataclasses
import re
from pathlib import Path

import pytest
from bascule.config import ConfigError, parse_config
from bascule.registry import discover
from bascule.testing import start_gateway, start_upstream
from bascule_request_transformer import FieldRules, RequestTransformer


def config(upstream_url: str, table: str, path: str = "/api/users/{id}", strip_path: bool = True) -> str:
    return f"""
        [services.users]
        targets = ["{upstream_url}"]

        [[routes]]
        name = "users"
        paths = ["{path}"]
        service = "users"
        strip_path = {str(strip_path).lower()}
        [routes.plugins.request-transformer]
        {table}

        [[routes]]
        name = "plain"
        paths = ["/plain"]
        service = "users"
    """


async def test_path_template_from_path_params(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream.url, 'path = "/v2/people/{id}/profile{rest}"'), plugins=[RequestTransformer]
    )
    async with gw.client() as client:
        a = await client.get("/api/users/42?fields=name")
        b = await client.get("/api/users/7/orders/3")
    assert a.status_code == b.status_code == 200
    assert [(r.path, r.query) for r in upstream.requests] == [
        ("/v2/people/42/profile", "fields=name"),
        ("/v2/people/7/profile/orders/3", ""),
    ]


async def test_header_rules(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            """
        [routes.plugins.request-transformer.headers]
        remove = ["x-debug"]
        rename = { x-old-token = "x-token" }
        replace = { accept = "application/json" }
        add = { x-user-id = "{id}", x-api-version = "2", x-present = "not used" }
    """,
        ),
        plugins=[RequestTransformer],
    )
    async with gw.client() as client:
        r = await client.get(
            "/api/users/42",
            headers={
                "x-debug": "1",
                "x-old-token": "abc",
                "accept": "text/html",
                "x-present": "kept",
            },
        )
    assert r.status_code == 200
    seen = upstream.requests[0]
    assert seen.header("x-debug") is None
    assert seen.header("x-old-token") is None
    assert seen.header("x-token") == "abc"
    assert seen.header("accept") == "application/json"
    assert seen.header("x-user-id") == "42"
    assert seen.header("x-api-version") == "2"
    assert seen.headers.get_all("x-present") == ["kept"]  # add never overwrites


async def test_replace_only_touches_present_fields(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            """
        headers.replace = { x-tenant = "acme" }
        query.replace = { page = "1" }
    """,
        ),
        plugins=[RequestTransformer],
    )
    async with gw.client() as client:
        await client.get("/api/users/1")
        await client.get("/api/users/1?page=9&page=10", headers={"x-tenant": "other"})
    absent, present = upstream.requests
    assert absent.header("x-tenant") is None and absent.query == ""
    assert present.header("x-tenant") == "acme"
    assert present.query == "page=1"


async def test_query_rules_keep_untouched_parameters_byte_for_byte(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            """
        [routes.plugins.request-transformer.query]
        remove = ["debug"]
        rename = { q = "search" }
        add = { user = "{id}", tag = "a&b=c" }
    """,
        ),
        plugins=[RequestTransformer],
    )
    async with gw.client() as client:
        r = await client.get("/api/users/42?q=caf%C3%A9+noir&debug=1&keep=%2Fx+y&flag")
    assert r.status_code == 200
    assert upstream.requests[0].query == "search=caf%C3%A9+noir&keep=%2Fx+y&flag&user=42&tag=a%26b%3Dc"


async def test_builtin_values_and_consumer_free_request(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            """
        headers.add = { x-gateway-request = "{request_id}", x-caller = '{client_ip}|{consumer}|{"k": 1}' }
    """,
        ),
        plugins=[RequestTransformer],
    )
    async with gw.client() as client:
        r = await client.get("/api/users/1")
    seen = upstream.requests[0]
    assert seen.header("x-gateway-request") == r.headers["x-request-id"]
    assert seen.header("x-caller") == '127.0.0.1||{"k": 1}'  # no consumer; other braces are literal


async def test_only_on_its_route_and_client_request_unchanged(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        config(
            upstream.url,
            """
        path = "/v2/{id}"
        headers.add = { x-v = "2" }
    """,
        ),
        plugins=[RequestTransformer],
    )
    async with gw.client() as client:
        await client.get("/plain/users/1")
    seen = upstream.requests[0]
    assert seen.path == "/plain/users/1"
    assert seen.header("x-v") is None


async def test_template_naming_an_uncaptured_parameter_is_a_500(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, 'path = "/v2/{user_id}"'), plugins=[RequestTransformer])
    async with gw.client() as client:
        r = await client.get("/api/users/1")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert "misconfigured" in r.json()["detail"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('path = "v2/{id}"', "path: expected a path starting with '/', without '\\?', '#' or whitespace"),
        ('path = "/v2?x=1"', "path: expected a path starting with '/', without '\\?'.*, got '/v2\\?x=1'"),
        ('headers.add = { "bad name" = "1" }', "headers.add.bad name: expected a header name"),
        ('headers.rename = { x-a = "b:c" }', "headers.rename.x-a: expected a header name .*, got 'b:c'"),
        ('headers.add = { x-a = "line\\nbreak" }', "headers.add.x-a: a header value cannot hold CR, LF, NUL"),
        ('headers.drop = ["x"]', "unknown key"),
        ("", "nothing to do"),
    ],
)
async def test_invalid_settings_are_config_errors(nursery, table, message):
    with pytest.raises(ConfigError, match=message) as e:
        await start_gateway(nursery, config("http://127.0.0.1:9", table), plugins=[RequestTransformer])
    assert 'route "users": plugins.request-transformer' in str(e.value)


def test_readme_documents_every_setting_and_its_example_is_valid():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rules = [f.name for f in dataclasses.fields(FieldRules)]
    keys = ["path"] + [f"{section}.{rule}" for section in ("headers", "query") for rule in rules]
    for key in keys:
        assert f"| `{key}` |" in readme, f"README.md does not document {key}"
    (example,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    service = '[services.orders]\ntargets = ["http://127.0.0.1:9"]\n'
    parse_config(service + example, "plugins.toml", discover([RequestTransformer], entry_points=False))
