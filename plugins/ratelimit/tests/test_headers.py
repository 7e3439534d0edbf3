"""Response fields checked against draft-ietf-httpapi-ratelimit-headers-11 and RFC 9651."""

import re

from bascule.testing import start_gateway, start_upstream
from bascule_ratelimit import QUOTA_EXCEEDED, RateLimit
from bascule_sdk import Response

# RFC 9651 (Structured Field Values), the parts these fields use.
_KEY = r"[a-z*][a-z0-9_\-.*]*"
_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
_BARE = rf"(?:{_STRING}|-?\d{{1,15}}|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|\?[01])"
_ITEM = re.compile(rf"({_BARE})((?:;[ ]*{_KEY}(?:={_BARE})?)*)")
_PARAM = re.compile(rf";[ ]*({_KEY})(?:=({_BARE}))?")


def sf_list(value: str) -> list[tuple[str, dict[str, str]]]:
    """Parse a List of Items; fail the test on any syntax error."""
    members, pos = [], 0
    while True:
        m = _ITEM.match(value, pos)
        assert m, f"not an sf-item at {pos}: {value!r}"
        params = {k: v for k, v in _PARAM.findall(m.group(2))}
        members.append((m.group(1), params))
        pos = m.end()
        if pos == len(value):
            return members
        sep = re.compile(r"[ \t]*,[ \t]*").match(value, pos)
        assert sep and sep.end() < len(value), f"bad list separator at {pos}: {value!r}"
        pos = sep.end()


def policies_and_limits(response) -> tuple[dict, dict]:
    """``RateLimit-Policy`` and ``RateLimit`` members by policy name, checked per the draft."""
    policies, limits = {}, {}
    for field in response.headers.get_list("ratelimit-policy"):
        for name, params in sf_list(field):
            assert name.startswith('"'), "a policy item must be a String"
            assert re.fullmatch(r"\d+", params["q"]), "q: a non-negative Integer"
            assert re.fullmatch(r"[1-9]\d*", params["w"]), "w: a positive Integer"
            policies[name.strip('"')] = (int(params["q"]), int(params["w"]))
    for field in response.headers.get_list("ratelimit"):
        for name, params in sf_list(field):
            assert name.startswith('"'), "a service limit item must be a String"
            assert re.fullmatch(r"\d+", params["r"]) and re.fullmatch(r"\d+", params["t"])
            limits[name.strip('"')] = (int(params["r"]), int(params["t"]))
    return policies, limits


async def gateway(nursery, table: str, handler=None):
    upstream = await start_upstream(nursery, handler) if handler else await start_upstream(nursery)
    gw = await start_gateway(
        nursery,
        f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "api"
        paths = ["/api"]
        service = "api"
        [routes.plugins.rate-limit]
        {table}
    """,
        plugins=[RateLimit],
    )
    return upstream, gw


async def test_allowed_and_rejected_responses_carry_draft_fields(nursery):
    _, gw = await gateway(
        nursery,
        """
        limits = [{ name = "burst", limit = 2, window = "10s", algorithm = "fixed-window" },
                  { name = "daily", limit = 100, window = "1d" }]
    """,
    )
    async with gw.client() as client:
        first = await client.get("/api")
        await client.get("/api")
        rejected = await client.get("/api")
    policies, limits = policies_and_limits(first)
    assert policies == {"burst": (2, 10), "daily": (100, 86400)}
    assert limits == {"burst": (1, 10)}  # the tightest only
    policies, limits = policies_and_limits(rejected)
    assert policies == {"burst": (2, 10), "daily": (100, 86400)}
    ((remaining, t),) = limits.values()
    assert remaining == 0
    retry_after = int(rejected.headers["retry-after"])
    assert 1 <= t <= retry_after <= 10  # Retry-After never ends before the effective window


async def test_a_rejection_is_a_quota_exceeded_problem(nursery):
    _, gw = await gateway(nursery, 'limit = 1\nwindow = "1m"')
    async with gw.client() as client:
        await client.get("/api")
        r = await client.get("/api")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["violated-policies"] == ["1-per-1m"]
    assert body["request_id"] == r.headers["x-request-id"]


async def test_legacy_both_and_none(nursery):
    for style, present, absent in (
        ("legacy", {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}, {"ratelimit"}),
        ("both", {"x-ratelimit-limit", "ratelimit", "ratelimit-policy"}, set()),
        ("none", set(), {"x-ratelimit-limit", "ratelimit", "ratelimit-policy"}),
    ):
        _, gw = await gateway(nursery, f'limit = 5\nwindow = "1m"\nalgorithm = "fixed-window"\nheaders = "{style}"')
        async with gw.client() as client:
            r = await client.get("/api")
        assert present <= set(r.headers), style
        assert not absent & set(r.headers), style
        if "x-ratelimit-limit" in present:
            assert [r.headers[f"x-ratelimit-{k}"] for k in ("limit", "remaining", "reset")] == ["5", "4", "60"]


async def test_upstream_fields_are_kept_beside_the_gateways(nursery):
    async def handler(request):
        return Response(200, {"ratelimit-policy": '"origin";q=1000;w=60', "ratelimit": '"origin";r=999;t=60'})

    _, gw = await gateway(nursery, 'limit = 10\nwindow = "1m"', handler)
    async with gw.client() as client:
        r = await client.get("/api")
    policies, limits = policies_and_limits(r)
    assert set(policies) == {"origin", "10-per-1m"}
    assert set(limits) == {"origin", "10-per-1m"}


async def test_remaining_never_exceeds_the_advertised_quota(nursery):
    """With a burst, ``q`` is the bucket's capacity and ``w`` the time it takes to refill,
    so ``r <= q`` and ``q / w`` is still the configured rate (draft §2, §3.1, §4.1.1)."""
    cases = [
        # (settings, the policy advertised: (q, w))
        ('limit = 20\nwindow = "1m"\nburst = 40', (40, 120)),  # 1 per 3 s, 40 at once
        ('limit = 6\nwindow = "1m"\nburst = 3', (3, 30)),
        ('limit = 1000\nwindow = "1h"\nburst = 10', (10, 36)),
        ('limit = 7\nwindow = "1m"\nburst = 3', (3, 26)),  # 25.7 s rounds up: never more permissive
        ('limit = 10\nwindow = "1m"', (10, 60)),  # no burst: the limit and window as configured
        ('limit = 10\nwindow = "1m"\nalgorithm = "sliding-window"', (10, 60)),
    ]
    for table, advertised in cases:
        for style in ("ietf", "both"):
            _, gw = await gateway(nursery, f'{table}\nheaders = "{style}"')
            async with gw.client() as client:
                responses = [await client.get("/api") for _ in range(3)]
            for i, r in enumerate(responses):
                policies, limits = policies_and_limits(r)
                ((q, w),) = policies.values()
                ((remaining, _t),) = limits.values()
                assert (q, w) == advertised, table
                assert remaining <= q, (table, q, remaining)
                assert remaining == q - 1 - i, table  # the full bucket, less what was used
                if style == "both":
                    assert int(r.headers["x-ratelimit-remaining"]) <= int(r.headers["x-ratelimit-limit"]) == q
