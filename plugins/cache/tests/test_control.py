"""RFC 9111 arithmetic and rules: directive parsing, HTTP dates, freshness, storing, serving stale."""

from __future__ import annotations

import pytest
from bascule_cache import control
from bascule_cache.control import delta_seconds, http_date, parse_cache_control, parse_vary, weak_match
from bascule_cache.entry import Entry, Policy, Use, freshness_lifetime, serves_on_error, storable, usable
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


def test_a_cache_control_value_parses_alike_on_either_side_of_the_remembered_length():
    # Values up to control._REMEMBERED characters are parsed once and remembered; a longer one (a
    # client's, say) is parsed each time and not kept. Either way the directives are the same.
    for length in (control._REMEMBERED, control._REMEMBERED + 1):
        value = "max-age=60, " + "x" * (length - len("max-age=60, ") - len(', a="b,c"')) + ', a="b,c"'
        assert len(value) == length
        kept = control._directives_of.cache_info().currsize
        assert parse_cache_control([value]) == {"max-age": "60", "x" * (length - 21): None, "a": "b,c"}
        assert control._directives_of.cache_info().currsize - kept == (length <= control._REMEMBERED)


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


def stored(cc: str, age: float = 0, **fields: str) -> Entry:
    """An entry of a 200 with Cache-Control ``cc``, ``age`` seconds old at NOW."""
    headers = Headers.of({"cache-control": cc, "date": date(-age), **fields})
    return Entry.from_response(200, headers, b"", NOW - age, NOW - age, Policy())


@pytest.mark.parametrize(
    ("cc", "age", "request_cc", "use"),
    [
        ("max-age=60", 10, {}, Use.FRESH),
        ("max-age=60", 70, {}, Use.FORWARD),
        ("max-age=60", 10, {"no-cache": None}, Use.FORWARD),
        ("no-cache", 0, {}, Use.FORWARD),  # section 5.2.2.4: validate on every use
        ("max-age=60", 10, {"max-age": "5"}, Use.FORWARD),
        ("max-age=60", 10, {"min-fresh": "55"}, Use.FORWARD),  # 50 s of freshness left
        ("max-age=60", 70, {"max-stale": None}, Use.STALE),
        ("max-age=60", 70, {"max-stale": "5"}, Use.FORWARD),  # 10 s stale
        ("max-age=60, must-revalidate", 70, {"max-stale": None}, Use.FORWARD),  # section 4.2.4
        ("s-maxage=60", 70, {"max-stale": None}, Use.FORWARD),  # s-maxage implies proxy-revalidate
        ("max-age=60, stale-while-revalidate=30", 80, {}, Use.STALE_REFRESH),
        ("max-age=60, stale-while-revalidate=30", 100, {}, Use.FORWARD),
    ],
)
def test_how_a_stored_response_may_answer(cc, age, request_cc, use):
    assert usable(stored(cc, age), request_cc, NOW) is use


def test_nothing_stored_means_forward():
    assert usable(None, {}, NOW) is Use.FORWARD


def test_stale_if_error_from_the_response_or_the_request():
    assert serves_on_error(stored("max-age=60, stale-if-error=30", 80), {}, NOW)
    assert not serves_on_error(stored("max-age=60, stale-if-error=30", 100), {}, NOW)
    assert serves_on_error(stored("max-age=60", 100), {"stale-if-error": "60"}, NOW)
    assert not serves_on_error(stored("max-age=60, must-revalidate, stale-if-error=30", 80), {}, NOW)


@pytest.mark.parametrize(
    ("status", "request_fields", "response_fields", "policy", "expected"),
    [
        (200, {}, {"cache-control": "max-age=60"}, Policy(), True),
        (200, {}, {}, Policy(), True),  # cacheable by default: heuristic freshness
        (201, {}, {}, Policy(), False),  # not cacheable by default, no explicit freshness
        (201, {}, {"cache-control": "max-age=60"}, Policy(), True),
        (206, {}, {"cache-control": "max-age=60"}, Policy(), False),
        (200, {}, {"cache-control": "max-age=60, no-store"}, Policy(), False),
        (200, {}, {"cache-control": "max-age=60, no-store, must-understand"}, Policy(), True),
        (429, {}, {"cache-control": "max-age=60, must-understand"}, Policy(statuses=frozenset({429})), False),
        (200, {}, {"cache-control": "private"}, Policy(), False),
        (200, {}, {"cache-control": 'private="x", max-age=60'}, Policy(), True),  # stored without x
        (200, {"authorization": "Bearer t"}, {"cache-control": "max-age=60"}, Policy(), False),
        (200, {"authorization": "Bearer t"}, {"cache-control": "public, max-age=60"}, Policy(), True),
        (200, {}, {"cache-control": "max-age=60", "set-cookie": "a=1"}, Policy(), False),
        (200, {}, {"cache-control": "max-age=60", "set-cookie": "a=1"}, Policy(store_set_cookie=True), True),
        (200, {}, {"cache-control": "max-age=60", "vary": "*"}, Policy(), False),
        (200, {}, {"cache-control": "max-age=60"}, Policy(statuses=frozenset({404})), False),
        (
            200,
            {},
            {"cache-control": "max-age=60", "content-type": "Application/JSON; charset=utf-8"},
            Policy(content_types=frozenset({"application/json"})),
            True,
        ),
        (200, {}, {"cache-control": "max-age=60"}, Policy(content_types=frozenset({"application/json"})), False),
    ],
)
def test_what_may_be_stored(status, request_fields, response_fields, policy, expected):
    assert storable(status, Headers.of(request_fields), Headers.of(response_fields), policy) is expected


def test_kept_while_fresh_then_as_long_as_it_may_serve_stale_or_be_revalidated():
    policy = Policy(keep_stale=3600)
    assert stored("max-age=60", 10).keep_for(NOW, policy) == 50
    assert stored("max-age=60, stale-if-error=300", 10).keep_for(NOW, policy) == 350
    assert stored("max-age=60", 10, etag='"v"').keep_for(NOW, policy) == 3650


def test_readme_lists_every_setting():
    import dataclasses
    from pathlib import Path

    from bascule_cache import CacheSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(CacheSettings) if f"| `{f.name}` |" not in readme]
    assert not missing, f"README.md does not document: {missing}"
