"""The SDK's header settings types (``HeaderName``, ``HeaderValue``): what a config may set
in a header field, checked once when it loads, stated by ``bascule schema`` too."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from bascule import ConfigError
from bascule.schema import settings_schema
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Context, HeaderName, HeaderValue, Plugin, Response, hookimpl, setting
from bascule_sdk.settings import SettingsError, parse

jsonschema = pytest.importorskip("jsonschema")


@dataclass(frozen=True)
class StampSettings:
    header: HeaderName = setting("X-Stamp", "A response header to set.")
    value: HeaderValue = setting("on", "Its value.")
    more: dict[HeaderName, HeaderValue] = setting({}, "More headers: name = value.")


class Stamp(Plugin[StampSettings]):
    name = "stamp"
    Settings = StampSettings

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        for name, value in {self.settings.header: self.settings.value, **self.settings.more}.items():
            response.headers.set(name, value)


def route(upstream_url: str, table: str) -> str:
    return f"""
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
        [routes.plugins.stamp]
        {table}
    """


async def test_configured_headers_reach_the_client(nursery):
    upstream = await start_upstream(nursery)
    table = 'header = "X-Tenant"\nvalue = "a\\tb é"\nmore = { "X-Trace_1" = "" }'
    gw = await start_gateway(nursery, route(upstream.url, table), plugins=[Stamp])
    async with gw.client() as client:
        response = await client.get("/x")
    assert response.headers["x-tenant"].encode("latin-1") == "a\tb é".encode("latin-1")
    assert response.headers["x-trace_1"] == ""


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('header = "X Stamp"', "plugins.stamp.header: expected a header name \\(letters, digits and .*, got .X Stamp."),
        ('header = "x:y"', "plugins.stamp.header: expected a header name .*, got 'x:y'"),
        ('header = ""', "plugins.stamp.header: expected a header name .*, got ''"),
        ("header = 5", "plugins.stamp.header: expected a header name, got an integer"),
        ('value = "hunter2\\r\\nSet-Cookie: x=1"', "plugins.stamp.value: a header value cannot hold CR, LF, NUL"),
        ('value = "a\\u0000b"', "plugins.stamp.value: a header value cannot hold"),
        ('value = "a\\u007fb"', "plugins.stamp.value: a header value cannot hold"),
        ('value = "€"', "beyond U\\+00FF"),
        ('more = { "bad name" = "1" }', "plugins.stamp.more.bad name: expected a header name"),
        ('more = { x-a = "1\\n2" }', "plugins.stamp.more.x-a: a header value cannot hold"),
    ],
)
async def test_an_invalid_header_is_a_config_error_naming_route_and_key(nursery, table, message):
    with pytest.raises(ConfigError, match=message) as e:
        await start_gateway(nursery, route("http://127.0.0.1:9", table), plugins=[Stamp])
    assert 'route "api"' in str(e.value)
    assert "hunter2" not in str(e.value)  # a value is never quoted: it may be a credential


@pytest.mark.parametrize(
    "table",
    [
        {"header": "X-A"},
        {"header": "X A"},
        {"header": "*"},
        {"value": "a\tb"},
        {"value": "a\nb"},
        {"value": "é"},
        {"value": "€"},
        {"more": {"X-A": "1"}},
        {"more": {"X A": "1"}},
        {"more": {"X-A": "\r"}},
    ],
)
def test_the_schema_refuses_what_the_settings_refuse(table):
    try:
        parse(StampSettings, table)
        valid = True
    except SettingsError:
        valid = False
    assert jsonschema.Draft202012Validator(settings_schema(StampSettings)).is_valid(table) == valid
