"""The local backend through a real gateway, with an injected clock.

Counts are taken from what the upstream received, never from timings.
"""

import pytest
from bascule.config import ConfigError, parse_config
from bascule.registry import discover
from bascule.testing import start_gateway, start_upstream
from bascule_ratelimit import RateLimit


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limited(clock: Clock) -> type[RateLimit]:
    return type("ClockedRateLimit", (RateLimit,), {"clock": clock})


def config(upstream, plugin_table: str, paths: str = '["/api"]') -> str:
    return f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "api"
        paths = {paths}
        service = "api"
        [routes.plugins.rate-limit]
        {plugin_table}
    """


async def statuses(client, n: int, path: str = "/api/x", **kwargs) -> list[int]:
    return [(await client.get(path, **kwargs)).status_code for _ in range(n)]


async def test_gcra_burst_then_refill(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream, 'limit = 6\nwindow = "1m"\nburst = 3'), plugins=[limited(clock)])
    async with gw.client() as client:
        assert await statuses(client, 5) == [200, 200, 200, 429, 429]
        r = await client.get("/api/x")
        assert r.headers["retry-after"] == "10"  # one request every 60 s / 6
        clock.advance(9.9)
        assert await statuses(client, 1) == [429]
        clock.advance(0.1)
        assert await statuses(client, 2) == [200, 429]
        clock.advance(600)  # long idle: the bucket holds the burst, not more
        assert await statuses(client, 4) == [200, 200, 200, 429]
    assert len(upstream.requests) == 7


async def test_rejected_requests_consume_nothing(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream, 'limit = 1\nwindow = "10s"'), plugins=[limited(clock)])
    async with gw.client() as client:
        assert await statuses(client, 1) == [200]
        for _ in range(5):
            assert await statuses(client, 10) == [429] * 10
            clock.advance(1)
        clock.advance(5)  # exactly one interval after the admitted request
        assert await statuses(client, 2) == [200, 429]
    assert len(upstream.requests) == 2


async def test_sliding_window_admits_exactly_limit_in_any_window(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream, 'limit = 3\nwindow = "10s"\nalgorithm = "sliding-window"'), plugins=[limited(clock)]
    )
    async with gw.client() as client:
        assert await statuses(client, 1) == [200]  # t=0
        clock.advance(4)
        assert await statuses(client, 2) == [200, 200]  # t=4
        clock.advance(5.9)
        assert await statuses(client, 1) == [429]  # t=9.9: three in the last 10 s
        clock.advance(0.1)
        assert await statuses(client, 2) == [200, 429]  # t=10: the request of t=0 left the window
        r = await client.get("/api/x")
        assert r.headers["retry-after"] == "4"  # the requests of t=4 leave at t=14
    assert len(upstream.requests) == 4


async def test_fixed_window_starts_with_the_first_request(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    gw = await start_gateway(
        nursery, config(upstream, 'limit = 2\nwindow = "10s"\nalgorithm = "fixed-window"'), plugins=[limited(clock)]
    )
    async with gw.client() as client:
        assert await statuses(client, 3) == [200, 200, 429]
        clock.advance(9.5)
        r = await client.get("/api/x")
        assert (r.status_code, r.headers["retry-after"]) == (429, "1")
        clock.advance(0.5)
        assert await statuses(client, 3) == [200, 200, 429]
    assert len(upstream.requests) == 4


async def test_tightest_of_several_limits_decides_and_rejections_consume_none(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    table = """
        [[routes.plugins.rate-limit.limits]]
        name = "per-second"
        limit = 2
        window = "1s"
        [[routes.plugins.rate-limit.limits]]
        name = "per-hour"
        limit = 3
        window = "1h"
    """
    gw = await start_gateway(nursery, config(upstream, "") + table, plugins=[limited(clock)])
    async with gw.client() as client:
        assert await statuses(client, 2) == [200, 200]
        r = await client.get("/api/x")
        assert r.status_code == 429
        assert r.json()["violated-policies"] == ["per-second"]
        clock.advance(1)
        r = await client.get("/api/x")  # the 429 above took nothing from the hourly budget
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"per-hour";r=0;t=1199'
        assert r.headers["ratelimit-policy"] == '"per-second";q=2;w=1, "per-hour";q=3;w=3600'
        clock.advance(1)
        r = await client.get("/api/x")
        assert r.status_code == 429
        assert r.json()["violated-policies"] == ["per-hour"]
        assert r.headers["retry-after"] == "1198"
    assert len(upstream.requests) == 3


async def test_local_max_keys_at_the_limit_forgets_the_least_recently_used(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    table = 'limit = 1\nwindow = "1h"\nkey = "header:x-client"\nlocal_max_keys = 2'
    gw = await start_gateway(nursery, config(upstream, table), plugins=[limited(clock)])
    async with gw.client() as client:
        for name in ("a", "b"):  # two buckets: both remembered
            assert await statuses(client, 2, headers={"x-client": name}) == [200, 429]
        assert await statuses(client, 1, headers={"x-client": "a"}) == [429]
        # A third bucket evicts the least recently used one (b) ...
        assert await statuses(client, 2, headers={"x-client": "c"}) == [200, 429]
        assert await statuses(client, 1, headers={"x-client": "a"}) == [429]
        # ... which starts afresh.
        assert await statuses(client, 1, headers={"x-client": "b"}) == [200]
    assert len(upstream.requests) == 4


async def test_buckets_survive_a_config_reload(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    text = config(upstream, 'limit = 2\nwindow = "1h"')
    gw = await start_gateway(nursery, text, plugins=[limited(clock)])
    async with gw.client() as client:
        assert await statuses(client, 1) == [200]
        await gw.reload(text.replace('window = "1h"', 'window = "1h"\nheaders = "legacy"'))
        r = await client.get("/api/x")  # a new plugin instance, the same bucket
        assert (r.status_code, r.headers["x-ratelimit-remaining"]) == (200, "0")
        assert await statuses(client, 1) == [429]
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('limit = 10\nwindow = "1.5s"', "plugins.rate-limit.window: must be a whole number of seconds, got 1.5s"),
        ('limit = 10\nwindow = "500ms"', "plugins.rate-limit.window: must be at least 1s, got '500ms'"),
        (
            'limits = [{ limit = 1, window = "0.5" }]',
            "plugins.rate-limit.limits[0].window: must be at least 1s, got '0.5'",
        ),
        ('limit = 10\nwindow = "1s"\nburst = 0', "plugins.rate-limit.burst: must be at least 1, got 0"),
        ('limit = 10\nwindow = "1s"\ngroup = "a b"', "plugins.rate-limit.group: expected 1 to 64 letters, digits"),
        ('limits = [{ limit = 1, window = "1s", name = "" }]', "limits[0].name: expected 1 to 64 letters, digits"),
        (
            'limit = 10\nwindow = "1s"\nburst = 5\nalgorithm = "fixed-window"',
            "burst: only the gcra algorithm has a burst",
        ),
        ('limit = 10\nwindow = "1s"\nkey = "cookie:sid"', "key: unknown part 'cookie:sid'"),
        ('limit = 0\nwindow = "1s"', "plugins.rate-limit.limit: must be at least 1, got 0"),
        ('limit = 2000001\nwindow = "2s"', "limit: at most 1000000 per second of window"),
        ('window = "1s"', "limit and window are required"),
        ('limit = 1\nwindow = "1s"\nlimits = [{ limit = 2, window = "1m" }]', "either limit/window/burst or limits"),
        (
            'limits = [{ limit = 2, window = "1m" }, { limit = 2, window = "60s" }]',
            "limits[1].name: another limit is named '2-per-1m'",
        ),
        (
            'limit = 1\nwindow = "1s"\nbackend = "redis"\nredis_url = "http://x"',
            "redis_url: expected a URL starting with redis://",
        ),
        ('limit = 1\nwindow = "1s"\nlocal_max_keys = 0', "local_max_keys: must be at least 1, got 0"),
        ('limit = "ten"\nwindow = "1s"', "plugins.rate-limit.limit: expected an integer, got a string"),
    ],
)
def test_bad_settings_are_one_clear_line(table, message):
    class Upstream:
        url = "http://127.0.0.1:9"

    with pytest.raises(ConfigError) as e:
        parse_config(config(Upstream, table), "plugins.toml", discover([RateLimit], entry_points=False))
    assert len(e.value.lines) == 1
    assert e.value.lines[0].startswith('plugins.toml: route "api": ')
    assert message in e.value.lines[0]


async def test_changing_a_limits_algorithm_starts_a_fresh_bucket(nursery):
    clock = Clock()
    upstream = await start_upstream(nursery)
    text = config(upstream, 'limits = [{ name = "main", limit = 1, window = "1h" }]')
    gw = await start_gateway(nursery, text, plugins=[limited(clock)])
    async with gw.client() as client:
        assert await statuses(client, 2) == [200, 429]
        await gw.reload(text.replace('window = "1h"', 'window = "1h", algorithm = "sliding-window"'))
        assert await statuses(client, 2) == [200, 429]
    assert len(upstream.requests) == 2
