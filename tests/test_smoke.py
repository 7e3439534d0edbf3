from bascule.testing import start_gateway, start_upstream


async def test_proxy_round_trip(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.users]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "users"
        paths = ["/api/users"]
        service = "users"
    """,
    )
    async with gw.client() as client:
        r = await client.post("/api/users/7?x=1", content=b"hello")
    assert r.status_code == 200, r.text
    assert r.json() == {"method": "POST", "path": "/api/users/7", "query": "x=1", "body": "hello"}
    assert r.headers["x-request-id"]
    seen = upstream.requests[-1]
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-request-id") == r.headers["x-request-id"]
