"""Hot reload in-process: no request fails across a swap; an invalid config changes nothing."""

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import echo, start_gateway, start_upstream


async def until(condition, timeout: float = 10) -> None:
    """Wait for ``condition()`` (a guard against a hang, not a measurement)."""
    with trio.fail_after(timeout):
        while True:
            if condition():
                return
            await trio.sleep(0.01)


def config(url: str, *routes: str, timeout: str = "30s") -> str:
    text = f"""
        [services.api]
        targets = ["{url}"]
        timeout = "{timeout}"
    """
    for name in routes:
        text += f"""
        [[routes]]
        name = "{name}"
        paths = ["/{name}"]
        service = "api"
        """
    return text


@pytest.mark.slow
async def test_2000_requests_across_a_reload_all_succeed_and_new_routes_go_live(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, "old"))
    service_before = gw.gateway.runtime.upstreams["api"]
    statuses: list[int] = []
    halfway = trio.Event()

    async with gw.client(timeout=30) as client:

        async def worker() -> None:
            for _ in range(100):
                statuses.append((await client.get("/old")).status_code)
                if len(statuses) == 1000:
                    halfway.set()

        async with trio.open_nursery() as load:
            for _ in range(20):
                load.start_soon(worker)
            await halfway.wait()
            await gw.reload(config(upstream.url, "old", "new"))
            reloaded_at = len(statuses)
        new = await client.get("/new")
    assert len(statuses) == 2000 and set(statuses) == {200}
    assert reloaded_at < 2000  # the swap happened under load
    assert new.status_code == 200
    assert gw.gateway.runtime.upstreams["api"] is service_before  # pool kept: service unchanged


async def test_an_invalid_reload_keeps_the_old_config_serving(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, config(upstream.url, "old"))
    runtime = gw.gateway.runtime
    with pytest.raises(ConfigError) as e:
        await gw.reload(config(upstream.url, "old", "new") + '\n[services.other]\ntargets = ["ftp://x"]\n')
    assert e.value.lines == [
        "plugins.toml: services.other: targets[0]: expected an http(s)://host[:port][/path] URL, got 'ftp://x'"
    ]
    assert gw.gateway.runtime is runtime
    async with gw.client(timeout=30) as client:
        assert (await client.get("/old")).status_code == 200
        assert (await client.get("/new")).status_code == 404


async def test_a_changed_service_gets_new_pools_and_requests_in_flight_finish(nursery):
    release = trio.Event()

    async def handler(request):
        if request.path == "/old/slow":
            await release.wait()
        return await echo(request)

    upstream = await start_upstream(nursery, handler)
    gw = await start_gateway(nursery, config(upstream.url, "old"))
    before = gw.gateway.runtime.upstreams["api"]
    async with gw.client(timeout=30) as client, trio.open_nursery() as calls:
        slow = []

        async def call_slow():
            slow.append(await client.get("/old/slow"))

        calls.start_soon(call_slow)
        await until(lambda: bool(upstream.requests))
        await gw.reload(config(upstream.url, "old", timeout="10s"))
        after = gw.gateway.runtime.upstreams["api"]
        fast = await client.get("/old/fast")
        release.set()
    assert after is not before and after.settings.timeout == 10.0
    assert fast.status_code == 200
    assert slow[0].status_code == 200  # finished on the old runtime
