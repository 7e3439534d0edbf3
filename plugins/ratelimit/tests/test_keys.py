"""Which bucket a request draws from, through a real gateway (local backend)."""

from bascule.testing import start_gateway, start_upstream
from bascule_ratelimit import RateLimit
from bascule_sdk import Consumer, Context, Plugin, hookimpl


class HeaderAuth(Plugin):
    """Stands in for an auth plugin: ``X-User: NAME`` becomes ``ctx.consumer``."""

    name = "header-auth"
    priority = 1000

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if user := ctx.request.headers.get("x-user"):
            ctx.consumer = Consumer(name=user)


def route(name: str, path: str, table: str) -> str:
    return f"""
        [[routes]]
        name = "{name}"
        paths = ["{path}"]
        service = "api"
        [routes.plugins.rate-limit]
        {table}
    """


async def gateway(nursery, routes: str, gateway_table: str = ""):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [gateway]
        {gateway_table}
        [plugins.header-auth]
        [services.api]
        targets = ["{upstream.url}"]
        {routes}
    """,
        plugins=[RateLimit, HeaderAuth],
    )
    return upstream, gw


async def statuses(client, n: int, path: str = "/api", **kwargs) -> list[int]:
    return [(await client.get(path, **kwargs)).status_code for _ in range(n)]


async def test_a_spoofed_x_forwarded_for_does_not_change_the_bucket(nursery):
    upstream, gw = await gateway(nursery, route("api", "/api", 'limit = 2\nwindow = "1h"\nkey = "ip"'))
    async with gw.client() as client:
        codes = [(await client.get("/api", headers={"x-forwarded-for": f"10.0.0.{i}"})).status_code for i in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    assert len(upstream.requests) == 2


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(nursery):
    upstream, gw = await gateway(
        nursery, route("api", "/api", 'limit = 1\nwindow = "1h"\nkey = "ip"'), 'trusted_proxies = ["127.0.0.1/32"]'
    )
    async with gw.client() as client:
        for client_ip in ("203.0.113.7", "203.0.113.8"):
            assert await statuses(client, 2, headers={"x-forwarded-for": client_ip}) == [200, 429]
    assert len(upstream.requests) == 2


async def test_consumer_key_falls_back_to_ip(nursery):
    upstream, gw = await gateway(nursery, route("api", "/api", 'limit = 1\nwindow = "1h"\nkey = ["consumer", "ip"]'))
    async with gw.client() as client:
        assert await statuses(client, 2, headers={"x-user": "alice"}) == [200, 429]
        assert await statuses(client, 2, headers={"x-user": "bob"}) == [200, 429]
        assert await statuses(client, 2) == [200, 429]  # anonymous: per IP
    assert len(upstream.requests) == 3


async def test_a_group_shares_one_budget_across_routes(nursery):
    table = 'limit = 3\nwindow = "1h"\ngroup = "catalog"'
    upstream, gw = await gateway(
        nursery, route("a", "/a", table) + route("b", "/b", table) + route("c", "/c", 'limit = 3\nwindow = "1h"')
    )
    async with gw.client() as client:
        assert await statuses(client, 2, "/a") == [200, 200]
        assert await statuses(client, 2, "/b") == [200, 429]
        assert await statuses(client, 4, "/c") == [200, 200, 200, 429]  # no group: its own budget
    assert len(upstream.requests) == 6


async def test_path_parameter_and_combined_keys(nursery):
    upstream, gw = await gateway(
        nursery,
        route("items", "/items/{id}", 'limit = 1\nwindow = "1h"\nkey = "path:id"')
        + route("tenants", "/tenants", 'limit = 1\nwindow = "1h"\nkey = "header:X-Tenant+consumer"'),
    )
    async with gw.client() as client:
        assert await statuses(client, 2, "/items/1") == [200, 429]
        assert await statuses(client, 1, "/items/2") == [200]
        for tenant, user in (("t1", "alice"), ("t1", "bob"), ("t2", "alice")):
            assert await statuses(client, 2, "/tenants", headers={"x-tenant": tenant, "x-user": user}) == [200, 429]
    assert len(upstream.requests) == 5


async def test_credential_key_hashes_the_authorization_field(nursery):
    upstream, gw = await gateway(nursery, route("api", "/api", 'limit = 1\nwindow = "1h"\nkey = "credential"'))
    async with gw.client() as client:
        for token in ("Bearer one", "Bearer two"):
            assert await statuses(client, 2, headers={"authorization": token}) == [200, 429]
    assert len(upstream.requests) == 2


async def test_missing_key_is_rejected_or_let_through_as_configured(nursery):
    upstream, gw = await gateway(
        nursery,
        route("strict", "/strict", 'limit = 1\nwindow = "1h"\nkey = "consumer"')
        + route("lenient", "/lenient", 'limit = 1\nwindow = "1h"\nkey = "consumer"\nmissing_key = "allow"'),
    )
    async with gw.client() as client:
        r = await client.get("/strict")
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/problem+json"
        assert "consumer" in r.json()["detail"]
        assert await statuses(client, 3, "/lenient") == [200, 200, 200]
        assert "ratelimit" not in (await client.get("/lenient")).headers
        assert await statuses(client, 2, "/lenient", headers={"x-user": "carol"}) == [200, 429]
    assert len(upstream.requests) == 5
