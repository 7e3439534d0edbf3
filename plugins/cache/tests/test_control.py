"""RFC 9111 arithmetic: directive parsing, HTTP dates, freshness."""

from __future__ import annotations

import pytest
from bascule_cache.control import delta_seconds, http_date, parse_cache_control, parse_vary, weak_match
from bascule_cache.entry import Entry, Policy, freshness_lifetime
from bascule_sdk import Headers

NOW = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 GMT


def date(offset: float) -> str:
    from email.utils import formatdate

    return formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=60", {"max-age": "60"}),
        ("MaX-aGe=60, PUBLIC", {"max-age": "60", "public": None}),
        ('extension="max-age=100", max-age=1', {"extension": "max-age=100", "max-age": "1"}),
        ('no-cache="a, b", max-age=5', {"no-cache": "a, b", "max-age": "5"}),
        ("max-age=1, max-age=100", {"max-age": "1"}),  # the first occurrence wins
        ("max-age =100", {"max-age ": "100"}),  # not max-age
        ("max-age= 100", {"max-age": " 100"}),  # not a valid delta
    ],
)
def test_cache_control_parsing(value, expected):
    assert parse_cache_control([value]) == expected


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("60", 60),
        ("003600", 3600),
        ("99999999999", 2147483648),
        ("-1", None),
        ("1.5", None),
        ("a100", None),
        ("100a", None),
        (" 100", None),
        ("'3600'", None),
        (None, None),
    ],
)
def test_delta_seconds(arg, expected):
    assert delta_seconds(arg) == expected


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", True),
        ("SUN, 06 NOV 1994 08:49:37 gmt", True),
        ("Sunday, 06-Nov-94 08:49:37 GMT", True),
        ("Sun Nov  6 08:49:37 1994", True),
        ("Sun, 06 Nov 1994 08:49:37 UTC", False),
        ("Sun, 06 Nov 94 08:49:37 GMT", False),
        ("Sun 06 Nov 1994 08:49:37 GMT", False),
        ("Sun, 06  Nov  1994 08:49:37 GMT", False),
        ("Sun, 06-Nov-1994 08:49:37 GMT", False),
        ("Sun, 06 Nov 1994 08.49.37 GMT", False),
        ("Sun, 06 Nov 1994 8:49:37 GMT", False),
        ("0", False),
    ],
)
def test_http_dates_are_parsed_strictly(value, valid):
    assert (http_date(value) == 784111777.0) if valid else http_date(value) is None


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        ({"cache-control": "max-age=60, s-maxage=5"}, 5),
        ({"cache-control": "max-age=60", "expires": date(-100)}, 60),
        ({"cache-control": "max-age=0", "expires": date(100)}, 0),
        ({"cache-control": "max-age=abc"}, 0),
        ({"expires": date(100), "date": date(0)}, 100),
        ({"expires": date(300), "date": date(400)}, 0),
        ({"expires": "0", "date": date(0)}, 0),
        ({"expires": date(10)}, 10),  # no Date: the response time stands in
        ({"last-modified": date(-1000), "date": date(0)}, 100),  # heuristic: 10 %
        ({"last-modified": date(-(10**8)), "date": date(0)}, 86400),  # capped
    ],
)
def test_freshness_lifetime(headers, lifetime):
    assert freshness_lifetime(200, Headers.of(headers), NOW, Policy()) == lifetime


def test_heuristic_freshness_only_for_cacheable_by_default_or_public():
    h = {"last-modified": date(-1000), "date": date(0)}
    assert freshness_lifetime(201, Headers.of(h), NOW, Policy()) == 0
    assert freshness_lifetime(599, Headers.of({**h, "cache-control": "public"}), NOW, Policy()) == 100
    assert freshness_lifetime(200, Headers.of({"date": date(0)}), NOW, Policy(default_ttl=30)) == 30


def test_age_counts_date_age_header_and_delay():
    headers = Headers.of({"cache-control": "max-age=60", "date": date(-10), "age": "5"})
    entry = Entry.from_response(200, headers, b"", request_time=NOW - 2, response_time=NOW, policy=Policy())
    assert entry.age(NOW) == 10  # apparent age (10) beats age value + delay (5 + 2)
    assert entry.age(NOW + 30) == 40
    assert "age" not in entry.view


def test_qualified_no_cache_and_private_drop_the_listed_fields():
    headers = Headers.of(
        [("cache-control", 'no-cache="a", private="b", max-age=60'), ("a", "1"), ("b", "2"), ("c", "3")]
    )
    entry = Entry.from_response(200, headers, b"", NOW, NOW, Policy())
    assert ("a" not in entry.view, "b" not in entry.view, entry.view.get("c")) == (True, True, "3")
    assert not entry.no_cache


def test_vary_and_entity_tags():
    assert parse_vary(["Accept-Encoding, accept", "X-Foo"]) == ("accept", "accept-encoding", "x-foo")
    assert parse_vary(["accept, *"]) == ("*",)
    assert weak_match('"x", W/"y"', '"y"') and weak_match("*", '"z"')
    assert not weak_match('"x"', '"y"') and not weak_match('"x"', None)


def test_entries_survive_serialisation():
    headers = Headers.of({"cache-control": "max-age=60", "x-bin": "\xe9"})
    entry = Entry.from_response(200, headers, b"\x00body\n", NOW, NOW, Policy())
    entry.upstream = ("/p", "q=1", False)
    again = Entry.decode(entry.encode())
    assert (again.status, again.headers, again.body, again.lifetime, again.upstream) == (
        200,
        entry.headers,
        b"\x00body\n",
        60,
        ("/p", "q=1", False),
    )


def test_readme_lists_every_setting():
    import dataclasses
    from pathlib import Path

    from bascule_cache import CacheSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(CacheSettings) if f"| `{f.name}` |" not in readme]
    assert not missing, f"README.md does not document: {missing}"
