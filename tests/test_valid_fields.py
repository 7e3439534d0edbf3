"""Fields on the wire: ``headers.valid_fields`` decides as h11 does, and what it refuses is never written."""

from __future__ import annotations

import random

import h11
import pytest
from bascule.headers import valid_fields
from bascule.testing import start_gateway, start_upstream
from bascule_sdk import Context, Plugin, Request, Response, hookimpl

# Bytes a name or a value may hold, or must not: token characters, separators, whitespace, controls, obs-text.
ALPHABET = [b"a", b"Z", b"0", b"-", b"~", b"!", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x01", b"\x0b", b"\x0c"]
ALPHABET += [b"\x7f", b"\x80", b"\xff", b":", b"/", b'"', b"(", b"@"]


def text(rng: random.Random, plain: int, p_plain: float, longest: int) -> bytes:
    """Up to ``longest`` bytes, each from ``ALPHABET[:plain]`` with probability ``p_plain``, else any."""
    return b"".join(
        rng.choice(ALPHABET[:plain] if rng.random() < p_plain else ALPHABET) for _ in range(rng.randint(0, longest))
    )


def h11_accepts(fields: list[tuple[bytes, bytes]]) -> bool:
    try:
        h11.Response(status_code=200, headers=fields)
    except h11.LocalProtocolError:
        return False
    return True


def test_valid_fields_decides_as_h11_does():
    rng = random.Random(9110)
    refused = 0
    for _ in range(20_000):
        fields = [(text(rng, 6, 0.8, 5), text(rng, 7, 0.7, 6)) for _ in range(rng.randint(0, 4))]
        accepted = h11_accepts(fields)
        refused += not accepted
        assert valid_fields(fields) == accepted, fields
    assert 2_000 < refused < 18_000  # both answers were exercised


@pytest.mark.parametrize(
    "fields",
    [
        [(b"x-a", b"1\r\nx-b: 2")],  # a value that would split the head
        [(b"x-a", b"1\n")],
        [(b"x a", b"1")],  # not a token
        [(b"x-a", b" 1")],  # whitespace at an end
        [(b"", b"1")],
        [(b"x-a", b"1"), (b"x-b", b"2\x00")],
    ],
)
def test_valid_fields_refuses_what_h11_refuses(fields):
    assert not valid_fields(fields)
    assert not h11_accepts(fields)


class BadField(Plugin):
    """Adds a field h11 will not write: a name that is not a token."""

    name = "bad-field"

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        request.headers.add("x bad", "1")


async def test_a_field_h11_refuses_is_never_sent_upstream(nursery):
    up = await start_upstream(nursery, lambda request: Response(200, body=b"ok"))
    gw = await start_gateway(
        nursery,
        f"""
        [services.up]
        targets = ["{up.url}"]
        [[routes]]
        name = "r"
        paths = ["/"]
        service = "up"
        [routes.plugins.bad-field]
        """,
        plugins=[BadField],
    )
    async with gw.client() as client:
        r = await client.get("/x")
    assert r.status_code == 500, r.text  # the gateway's failure, not the service's (502)
    assert r.headers["content-type"] == "application/problem+json"
    assert up.requests == []
    (target,) = gw.gateway.describe_upstreams()["up"]["targets"]
    assert (target["failures"], target["consecutive_failures"]) == (0, 0)  # not counted against the service
