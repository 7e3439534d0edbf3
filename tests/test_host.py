"""The Host field (RFC 9112 3.2, RFC 3986 3.2.2): one grammar, ``headers.parse_host``,
and over a real socket: an invalid Host is a 400 and nothing reaches the upstream."""

import json

import pytest
from bascule.headers import InvalidField, arrival_headers, parse_host
from bascule.testing import parse_response, raw_exchange, start_gateway, start_upstream
from bascule_sdk import Headers

VALID = {
    "example.com": ("example.com", ""),
    "Example.COM:8080": ("example.com", "8080"),
    "a": ("a", ""),
    "a:": ("a", ""),  # RFC 3986 3.2.3: the port may be empty
    "a:0": ("a", "0"),
    "a:65535": ("a", "65535"),
    "127.0.0.1": ("127.0.0.1", ""),
    "127.0.0.1:80": ("127.0.0.1", "80"),
    "[::1]": ("[::1]", ""),
    "[::1]:443": ("[::1]", "443"),
    "[2001:DB8::1]": ("[2001:db8::1]", ""),
    "[v1.fe80::a+en1]": ("[v1.fe80::a+en1]", ""),  # IPvFuture
    "xn--bcher-kva.example": ("xn--bcher-kva.example", ""),
    "under_score.example": ("under_score.example", ""),
    "a%2Db.example": ("a%2db.example", ""),  # pct-encoded
    "sub-delims!$&'()*+;=.example": ("sub-delims!$&'()*+;=.example", ""),
}

INVALID = [
    "",  # empty: no host (RFC 9110 4.2.1)
    ":80",
    "a b",
    " a",
    "a\t",
    "a/b",
    "a?b",
    "a#b",
    "user@a",
    "a\\b",
    'a"b',
    "a,b",  # a list: two Host lines combined
    "a<b>",
    "a%",
    "a%zz",
    "[::1",  # unclosed
    "[::1]x",
    "[::1]:",  # nothing after the colon is fine, but see "[::1]:x"
    "[::1]:x",
    "[1.2.3.4]",
    "[fe80::1%eth0]",  # zone ids are not in RFC 3986
    "[]",
    "::1",
    "a:b",
    "a:80:90",
    "a:-1",
    "a:+80",
    "a:65536",
    "a:999999",
    "a:٣",  # a non-ASCII digit
    "é.example",
]
INVALID.remove("[::1]:")  # uri-host ":" with an empty port is the grammar's, as for "a:"


@pytest.mark.parametrize("value", VALID)
def test_valid_hosts_parse(value):
    assert parse_host(value) == VALID[value]


@pytest.mark.parametrize("value", INVALID)
def test_invalid_hosts_do_not_parse(value):
    assert parse_host(value) is None


def _arrive(raw, trusted=True):
    headers = Headers([(k.encode(), v.encode()) for k, v in raw])
    arrival_headers(headers, peer="10.0.0.1", trusted=trusted, client_ip="10.0.0.1", scheme="http", request_id="r")
    return headers


@pytest.mark.parametrize(
    "field",
    [
        ("x-forwarded-host", "a b"),
        ("x-forwarded-host", "a, b/c"),
        ("x-forwarded-for", "1.2.3.4, evil"),
        ("x-forwarded-proto", "javascript"),
        ("forwarded", "for=1.2.3.4;host=a b"),
        ("forwarded", 'for="1.2.3.4'),
        ("via", "1.1"),
        ("via", "1.1 a/b"),
    ],
)
def test_a_trusted_proxys_invalid_forwarding_field_is_refused(field):
    with pytest.raises(InvalidField):
        _arrive([("host", "a"), field])
    _arrive([("host", "a"), field], trusted=False)  # an untrusted peer's copy is dropped, not read


def test_a_trusted_proxys_valid_forwarding_fields_are_kept():
    headers = _arrive(
        [
            ("host", "a"),
            ("x-forwarded-for", "1.2.3.4, 2001:db8::1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example:8443"),
            ("forwarded", 'for=1.2.3.4;proto=https, for="[2001:db8::1]";host=shop.example'),
            ("via", "1.1 lb.example, HTTP/2 edge (cdn, v2)"),
        ]
    )
    assert headers.get("x-forwarded-for") == "1.2.3.4, 2001:db8::1, 10.0.0.1"
    assert headers.get("x-forwarded-host") == "shop.example:8443"
    assert headers.get("x-forwarded-proto") == "https"
    assert headers.get("via") == "1.1 lb.example, HTTP/2 edge (cdn, v2), 1.1 bascule"


CONFIG = """
    [gateway]
    trusted_proxies = ["{trusted}"]
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "api"
    paths = ["/"]
    service = "api"
"""


def request(host: bytes, target: bytes = b"/a", version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    head = b"GET " + target + b" HTTP/" + version + b"\r\nHost: " + host + b"\r\n"
    return head + extra + b"Connection: close\r\n\r\n"


BAD_REQUESTS = {
    "space": request(b"a b"),
    "slash": request(b"a/b"),
    "question mark": request(b"a?b"),
    "userinfo": request(b"user@a"),
    "unclosed bracket": request(b"[::1"),
    "non-numeric port": request(b"a:http"),
    "port out of range": request(b"a:65536"),
    "comma": request(b"a,b"),
    "quote": request(b'a"b'),
    "empty, HTTP/1.1": request(b""),
    "absolute-form with userinfo": request(b"a", b"http://user@evil.example/a"),
    "absolute-form with a bad authority": request(b"a", b"http://a b/a"),
    "absolute-form with no authority": request(b"a", b"http:///a"),
    "absolute-form with an unclosed bracket": request(b"a", b"http://[::1/a"),
    "trusted X-Forwarded-Host": request(b"a", extra=b"X-Forwarded-Host: a/b\r\n"),
    "trusted X-Forwarded-For": request(b"a", extra=b"X-Forwarded-For: <script>\r\n"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
async def test_an_invalid_host_is_a_400_and_never_forwarded(nursery, name):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, trusted="127.0.0.1/32"))
    status, headers, body = parse_response(await raw_exchange(gw.url, BAD_REQUESTS[name]))
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400
    assert upstream.requests == []


async def test_valid_hosts_are_forwarded_as_validated(nursery):
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, CONFIG.format(url=upstream.url, trusted="192.0.2.0/24"))
    for payload in (
        request(b"Shop.Example:8080"),
        request(b"[::1]:8080"),
        request(b"ignored", b"http://shop.example/a"),
        request(b"", version=b"1.0"),  # HTTP/1.0: an empty Host is no Host
    ):
        status, _, _ = parse_response(await raw_exchange(gw.url, payload))
        assert status == 200, payload
    hosts = [(r.header("x-forwarded-host"), r.header("forwarded")) for r in upstream.requests]
    assert hosts == [
        ("Shop.Example:8080", 'for=127.0.0.1;proto=http;host="Shop.Example:8080"'),
        ("[::1]:8080", 'for=127.0.0.1;proto=http;host="[::1]:8080"'),
        ("shop.example", 'for=127.0.0.1;proto=http;host="shop.example"'),
        (None, "for=127.0.0.1;proto=http"),
    ]
