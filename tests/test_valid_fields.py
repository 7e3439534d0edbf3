"""Fields on the wire: ``headers.valid_fields`` decides as h11 does, what it refuses is never written,
and a head split for h11 (``headers.for_h11``) is written as h11 writes it whole."""

from __future__ import annotations

import random

import h11
import pytest
from bascule.headers import for_h11, valid_fields, with_lines
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
        accepted = h11_accepts(fields) and all(name == name.lower() for name, _ in fields)
        refused += not accepted
        assert valid_fields(fields) == accepted, fields  # and its names as Headers holds them: lower-case
    assert 2_000 < refused < 18_000  # both answers were exercised


@pytest.mark.parametrize(
    "fields",
    [
        [(b"x-a", b"1\r\nx-b: 2")],  # a value that would split the head
        [(b"x-a", b"1\n")],
        [(b"x a", b"1")],  # not a token
        [(b"x-a", b" 1")],  # whitespace at an end
        [(b"x-a", b"1\t")],
        [(b"x-a", b"1\x0b2")],  # whitespace other than SP and HTAB, within
        [(b"x-a", b"1\x0c2")],
        [(b"", b"1")],
        [(b"x-a", b"1"), (b"", b"2")],  # an empty name, not first
        [(b"x-a\nx-b", b"1"), (b"x-c", b"2")],  # a name that would split the head
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


def fields_by_name(head: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """A head's start line, and its field values by name, in order."""
    start, *lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    by_name: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        by_name.setdefault(name, []).append(value)
    return start, by_name


def h11_head(event: type[h11.Request] | type[h11.Response], fields: list[tuple[bytes, bytes]], **kw) -> bytes:
    """The head h11 writes for ``event`` with ``fields``, as the side that sends it."""
    role = h11.CLIENT if event is h11.Request else h11.SERVER
    connection = h11.Connection(role)
    if role is h11.SERVER:
        connection.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        connection.next_event()
    return connection.send(event(headers=fields, **kw))


EXTRA = [(b"x-a", b"1"), (b"date", b"Wed, 02 Dec 2026 12:00:00 GMT"), (b"x-a", b"2"), (b"set-cookie", b"a=b; c")]


@pytest.mark.parametrize(
    ("event", "kw", "own"),
    [
        (h11.Response, {"status_code": 200}, [(b"content-length", b"2")]),
        (h11.Response, {"status_code": 200}, []),  # h11 frames it: Transfer-Encoding: chunked
        (h11.Response, {"status_code": 200}, [(b"content-length", b"2"), (b"connection", b"close")]),
        (h11.Response, {"status_code": 304}, [(b"connection", b"keep-alive")]),
        (h11.Request, {"method": b"GET", "target": b"/"}, [(b"host", b"up")]),
        (h11.Request, {"method": b"POST", "target": b"/"}, [(b"host", b"up"), (b"content-length", b"5")]),
        (h11.Request, {"method": b"POST", "target": b"/"}, [(b"transfer-encoding", b"chunked"), (b"host", b"up")]),
        (h11.Request, {"method": b"PUT", "target": b"/"}, [(b"host", b"up"), (b"expect", b"100-continue")]),
    ],
)
def test_a_head_split_for_h11_is_written_as_h11_writes_it_whole(event, kw, own):
    for at in range(len(EXTRA) + 1):  # h11's own fields among the others, at each place
        fields = [*EXTRA[:at], *own, *EXTRA[at:]]
        given, lines, parsed = for_h11(fields)
        assert parsed
        assert given == own  # h11 is given only the fields it acts on
        assert fields_by_name(with_lines(h11_head(event, given, _parsed=True, **kw), lines)) == fields_by_name(
            h11_head(event, fields, **kw)
        )


@pytest.mark.parametrize(
    "fields",
    [
        [(b"x-a", b"1"), (b"x-b", bytearray(b"2"))],  # a plugin's bytearray in Headers.raw
        [(b"x-a", b"1"), (b"x-b", "2")],  # or str
    ],
)
def test_a_field_that_is_not_bytes_is_left_to_h11(fields):
    assert not valid_fields(fields)
    assert for_h11(fields) == (fields, b"", False)  # all of them to h11, which takes both
    assert h11_accepts(fields)


def test_a_name_that_is_not_bytes_is_left_to_h11():
    fields = [(b"x-a", b"1"), (bytearray(b"x-b"), b"2")]  # its bytes are a valid name
    assert for_h11(fields) == (fields, b"", False)
    assert h11_accepts(fields)


def test_a_head_with_a_field_h11_refuses_is_not_split():
    refused = [(b"content-length", b"2"), (b"x-a", b"1\x00")]
    assert for_h11(refused) == (refused, b"", False)  # all of them to h11, which checks them
    assert for_h11([(b"X-A", b"1")]) == ([(b"X-A", b"1")], b"", False)  # names it has not lower-cased are not split
