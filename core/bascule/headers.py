"""Header policy: every field the gateway drops, keeps or writes, in both directions.

Read top to bottom, this is the whole of it (RFC 9110 section 7.6, RFC 7239).

Arrival (``arrival_headers``, once per request, before any plugin runs):

- Hop-by-hop fields (``HOP_BY_HOP`` and every field named in ``Connection``)
  are dropped: they described the client's connection, not the request.
- Forwarding fields (``FORWARDING``: ``X-Forwarded-*``, ``Forwarded``,
  ``X-Real-IP``, ``Via``, ``X-Request-ID``) from a client are believed only
  when the connection comes from a ``trusted_proxies`` address, and then only
  if every member is valid (``InvalidField`` otherwise, a 400); a trusted
  proxy's chain is extended, anyone else's is dropped, and the gateway writes
  its own.
- Identity fields (``X-Consumer-*``, ``IDENTITY_PREFIX``, the SDK's) are only
  ever written by the gateway's auth plugins: a client's copies are dropped,
  on every route.
- Request smuggling: a request framed by both Content-Length and
  Transfer-Encoding is refused (``check_framing``), the framing decided before
  hop-by-hop fields go.
- Host: one valid ``uri-host [":" port]`` or none (``check_host``, grammar in
  ``parse_host``); several differing Host lines, or an absolute-form target
  whose authority is not a host (``absolute_form``: it replaces Host), are a
  400, and an invalid Host is removed so that nothing downstream sees it.
- Nothing is written from a value that was not validated: the Host is checked
  first.

Departure (``departure_headers``, once per request sent upstream, after the
``on_upstream_request`` hooks; ``handshake_headers`` for a WebSocket):

- The route's request fields, whatever the plugins made of them, less
  hop-by-hop fields (plugins may add some), less body framing
  (``Content-Length``/``Transfer-Encoding``: ``frame_body`` writes the one
  that matches the body sent), less forwarding fields: those are always the
  ones arrival wrote, so a plugin cannot forge them.
- Host (``with_host``, per attempt): the client's only with the route's
  ``preserve_host`` (``outbound_copy``), otherwise the target's authority.
- ``traceparent``/``tracestate`` (``set_trace``, per attempt): each attempt's
  own span.

Response (``response_headers``, once per upstream response): hop-by-hop
fields from the service are dropped before plugins or the client see them.

On the wire, either way (``for_h11``): every name a lower-case token, every value a
field-value, checked for the whole head at once (``valid_fields``); h11 writes the
fields it acts on (Host, framing, keep-alive) and the others follow as they are. A
head that fails the check goes to h11 whole, which refuses the field by name.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import string
from collections.abc import Iterable
from urllib.parse import urlsplit

from bascule_sdk import Context, Headers, HTTPError, Request, http
from bascule_sdk.identity import PREFIX as IDENTITY_PREFIX
from bascule_sdk.tracecontext import FIELDS as TRACE_FIELDS
from bascule_sdk.tracecontext import Trace

__all__ = [
    "FORWARDING",
    "FRAMING",
    "HANDSHAKE",
    "HOP_BY_HOP",
    "IDENTITY_PREFIX",
    "InvalidField",
    "TrustedProxies",
    "absolute_form",
    "arrival_headers",
    "check_framing",
    "check_host",
    "departure_headers",
    "for_h11",
    "frame_body",
    "handshake_headers",
    "host_for",
    "new_request_id",
    "outbound_copy",
    "parse_host",
    "response_headers",
    "set_trace",
    "valid_fields",
    "with_host",
    "with_lines",
]

Field = tuple[bytes, bytes]

# About one connection, not the request (RFC 9110 7.6.1); Proxy-Authenticate/-Authorization
# address this proxy (RFC 9110 11.7). Never forwarded, in either direction, nor what Connection names.
HOP_BY_HOP = frozenset(name.encode() for name in http.HOP_BY_HOP)
# Written by the gateway on arrival (a trusted proxy's values extended, anyone else's dropped);
# departure copies arrival's, whatever a plugin set.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"via",
    }
)
# Body framing: written for the body actually sent (``frame_body``), never copied.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# A WebSocket handshake's own fields: wsproto writes them anew for the service (Host per attempt).
HANDSHAKE = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
    }
)
_NOT_DEPARTING = HOP_BY_HOP | FRAMING | FORWARDING
VIA = "1.1 bascule"


class InvalidField(ValueError):
    """A request field the gateway would have to write on, and cannot validate: a 400."""


# RFC 3986 3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ), less ",": a Host
# value with a comma cannot be told from two Host lines combined (RFC 9110 5.3), which
# RFC 9112 3.2 rejects. IPv4address is a reg-name by this grammar.
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})*")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+;=:]+")


@functools.lru_cache(maxsize=1024)  # a gateway sees few Hosts, and asks of each up to three times a request
def parse_host(value: str) -> tuple[str, str] | None:
    """A Host value (``uri-host [":" port]``, RFC 9112 3.2 and RFC 3986 3.2.2-3.2.3)
    as ``(host, port)``, the host lower-cased and the port ``""`` when absent;
    ``None`` when the value is not valid or its host is empty (RFC 9110 4.2.1).

    host is an IP-literal (``[`` IPv6address or IPvFuture ``]``, no zone id) or
    a reg-name (IPv4address included); port is at most 5 digits, up to 65535.
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        literal, rest = value[1:end], value[end + 1 :]
        if not _IPV_FUTURE.fullmatch(literal):
            if "%" in literal:
                return None
            try:
                ipaddress.IPv6Address(literal)
            except ValueError:
                return None
        host = value[: end + 1]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")
        if not _REG_NAME.fullmatch(host):
            return None
    if not host or (port and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535)):
        return None
    return host.lower(), port


_PROTO = frozenset({"http", "https"})
# RFC 7239 4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ), pair = token "=" value
_TOKEN = http.TOKEN
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_PAIR = rf"{_TOKEN}=(?:{_TOKEN}|{_QUOTED})"
_FORWARDED_ELEMENT = re.compile(rf"(?:{_PAIR})?(?:[ \t]*;[ \t]*(?:{_PAIR})?)*")
# RFC 9110 7.6.3: [ protocol-name "/" ] protocol-version RWS ( uri-host [ ":" port ] / pseudonym ) [ RWS comment ]
_VIA_ELEMENT = re.compile(rf"(?:{_TOKEN}/)?{_TOKEN}[ \t]+([^ \t]+)(?:[ \t]+\([\t !-~\x80-\xff]*\))?")


def _members(values: list[str], split_quoted: bool = False) -> list[str]:
    """The comma-separated members of a list field's lines, empty ones dropped (RFC 9110 5.6.1);
    with ``split_quoted``, commas in quoted strings and comments do not split."""
    if split_quoted:
        out: list[str] = []
        for value in values:
            out += [m.strip() for m in re.findall(r'(?:[^,"(]|"(?:[^"\\]|\\.)*"|\([^)]*\))+', value) if m.strip()]
        return out
    return [m.strip() for value in values for m in value.split(",") if m.strip()]


def _check_trusted(headers: Headers) -> tuple[str, str, str, str, str]:
    """The forwarding fields a trusted proxy sent, each member validated:
    ``(x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded, via)``."""
    xff = _members(headers.get_all("x-forwarded-for"))
    for address in xff:
        if address.lower() != "unknown":
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise InvalidField(f"X-Forwarded-For from a trusted proxy holds {address!r}, not an address.") from None
    protos = [p.lower() for p in _members(headers.get_all("x-forwarded-proto"))]
    if any(p not in _PROTO for p in protos):
        raise InvalidField("X-Forwarded-Proto from a trusted proxy is not http or https.")
    hosts = _members(headers.get_all("x-forwarded-host"))
    if any(parse_host(h) is None for h in hosts):
        raise InvalidField("X-Forwarded-Host from a trusted proxy is not a valid host.")
    forwarded = _members(headers.get_all("forwarded"), split_quoted=True)
    if not all(_FORWARDED_ELEMENT.fullmatch(f) for f in forwarded):
        raise InvalidField("Forwarded from a trusted proxy is not valid (RFC 7239).")
    via = _members(headers.get_all("via"), split_quoted=True)
    for element in via:
        m = _VIA_ELEMENT.fullmatch(element)
        if m is None or (parse_host(m[1]) is None and not re.fullmatch(_TOKEN, m[1])):
            raise InvalidField("Via from a trusted proxy is not valid (RFC 9110 7.6.3).")
    return ", ".join(xff), ", ".join(protos), ", ".join(hosts), ", ".join(forwarded), ", ".join(via)


def _with_connection(raw: list[Field], drop: frozenset[bytes]) -> frozenset[bytes]:
    """``drop`` plus the fields ``raw``'s ``Connection`` lines name (RFC 9110 7.6.1)."""
    for name, value in raw:
        if name == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",")}
    return drop


def _strip_hop_by_hop(headers: Headers) -> None:
    """Remove hop-by-hop fields, including those listed in ``Connection``."""
    raw = headers.raw
    drop = _with_connection(raw, HOP_BY_HOP)
    if any(name in drop for name, _ in raw):
        headers.raw = [(k, v) for k, v in raw if k not in drop]


def absolute_form(headers: Headers, target: bytes) -> tuple[bytes, HTTPError | None]:
    """An absolute-form request target's path, its authority written as the Host
    (RFC 9112 3.2.2), then validated by ``check_host`` as any Host; the 400 for an
    authority with userinfo (RFC 9110 4.2.4) or no host (4.2.1), its Host removed.
    A target in any other form is returned as it is."""
    try:
        absolute = urlsplit(target.decode("latin-1"))
    except ValueError:  # an unclosed "["
        absolute = urlsplit("")
    if absolute.scheme not in ("http", "https"):
        return target, None
    error = None
    if "@" in absolute.netloc or not absolute.netloc:
        error = HTTPError(400, "The request target's authority is not a valid host.")
        headers.remove("host")
    else:
        headers.set("host", absolute.netloc)
    return absolute.path.encode("latin-1") or b"/", error


def check_host(headers: Headers, http_version: str) -> HTTPError | None:
    """The 400 for a Host that is not one valid ``uri-host [":" port]`` (RFC 9112 3.2), else None.

    HTTP/2's ``:authority`` arrives as ``host`` too (hypercorn), possibly next
    to a ``host`` field: every line must carry the same value. An invalid Host
    is removed, so nothing downstream (plugins, logs, the upstream) sees it.
    An empty Host is an error (RFC 9110 4.2.1), except in HTTP/1.0 where it
    counts as absent.
    """
    values = headers.get_all("host")
    if not values:
        return None
    if len(set(values)) > 1:
        headers.remove("host")
        return HTTPError(400, "The request has more than one Host.")
    if len(values) > 1:
        headers.set("host", values[0])
    if values[0] == "" and http_version == "1.0":
        headers.remove("host")
        return None
    if parse_host(values[0]) is None:
        headers.remove("host")
        return HTTPError(400, "The Host field is not a valid host (RFC 9112 3.2).")
    return None


def check_framing(headers: Headers) -> HTTPError | None:
    """The 400 (connection closed) for a request framed both by Content-Length and by
    Transfer-Encoding, the classic smuggling vector (RFC 9112 6.1), else None."""
    if "content-length" in headers and "transfer-encoding" in headers:
        return HTTPError(400, "Content-Length and Transfer-Encoding together are ambiguous.", {"connection": "close"})
    return None


class TrustedProxies:
    """The ``trusted_proxies`` networks, and the client address they reveal."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        if not self.networks:
            return False
        known = self._cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
                known = any(ip in net for net in self.networks)
            except ValueError:
                known = False
            if len(self._cache) < 10_000:
                self._cache[address] = known
        return known

    def client_ip(self, peer: str, forwarded_for: list[str]) -> str:
        """The first address, from the right, that is not a trusted proxy.

        ``forwarded_for`` is the X-Forwarded-For chain as received from a
        trusted ``peer`` (empty otherwise).
        """
        if peer not in self:
            return peer
        chain = [a.strip() for value in forwarded_for for a in value.split(",") if a.strip()]
        for address in reversed(chain):
            if address not in self:
                return address
        return chain[0] if chain else peer


def arrival_headers(
    headers: Headers,
    *,
    peer: str,
    trusted: bool,
    client_ip: str,
    scheme: str,
    request_id: str,
) -> None:
    """Rewrite a client's request headers as the gateway forwards them.

    Drops hop-by-hop fields, drops forwarding fields an untrusted peer sent,
    then writes the gateway's ``X-Forwarded-For/-Proto/-Host``, ``Forwarded``,
    ``X-Real-IP``, ``Via`` and ``X-Request-ID``. The Host field must already
    be valid (``parse_host``); ``client_ip`` an address. Raises
    ``InvalidField`` when a trusted peer's forwarding fields are not valid
    (nothing is written then: the caller answers 400).
    """
    _strip_hop_by_hop(headers)
    host = headers.get("host", "")
    if host and parse_host(host) is None:
        raise InvalidField("The Host field is not a valid host.")
    if trusted:
        xff, proto, fwd_host, forwarded, via = _check_trusted(headers)
        proto = proto or scheme
        fwd_host = fwd_host or host
    else:
        xff = forwarded = via = ""
        proto, fwd_host = scheme, host
    node = f'"[{peer}]"' if ":" in peer else peer
    own = f"for={node};proto={scheme}" + (f';host="{host}"' if host else "")  # no '"' nor '\\' in a valid host
    raw = [(k, v) for k, v in headers.raw if k not in FORWARDING and not k.startswith(IDENTITY_PREFIX)]
    raw += [
        (b"x-forwarded-for", (f"{xff}, {peer}" if xff else peer).encode("latin-1")),
        (b"x-forwarded-proto", proto.encode("latin-1")),
        (b"forwarded", (f"{forwarded}, {own}" if forwarded else own).encode("latin-1")),
        (b"x-real-ip", client_ip.encode("latin-1")),
        (b"via", (f"{via}, {VIA}" if via else VIA).encode("latin-1")),
        (b"x-request-id", request_id.encode("latin-1")),
    ]
    if fwd_host:
        raw.append((b"x-forwarded-host", fwd_host.encode("latin-1")))
    headers.raw = raw


def outbound_copy(headers: Headers, preserve_host: bool) -> Headers:
    """A copy of the client's (arrived) fields for the route to send on: its Host
    only with ``preserve_host``, else none, so ``with_host`` writes the target's."""
    copy = headers.copy()
    if not preserve_host:
        copy.remove("host")
    return copy


def departure_headers(ctx: Context, request: Request) -> list[Field]:
    """The fields of ``request`` (after ``on_upstream_request``) as a service receives them,
    less body framing (``frame_body``): hop-by-hop fields removed, the forwarding fields
    and request id that arrival wrote for ``ctx`` (whatever a plugin set in their place)."""
    raw = request.headers.raw
    drop = _with_connection(raw, _NOT_DEPARTING)
    return [(k, v) for k, v in raw if k not in drop] + [(k, v) for k, v in ctx.request.headers.raw if k in FORWARDING]


def handshake_headers(ctx: Context, request: Request) -> list[Field]:
    """``departure_headers`` for a WebSocket handshake, less the fields wsproto writes (``HANDSHAKE``)."""
    return [(k, v) for k, v in departure_headers(ctx, request) if k not in HANDSHAKE]


def frame_body(raw: list[Field], request: Request, length: str | None) -> None:
    """Append to ``raw`` the framing of the body sent: its size for a buffered body (none
    for an empty one, except POST/PUT/PATCH), ``length`` (the declared Content-Length) for
    a stream that declared one, chunked otherwise."""
    body = request.body
    if isinstance(body, bytes):
        if body or request.method in ("POST", "PUT", "PATCH"):
            raw.append((b"content-length", str(len(body)).encode()))
    elif length is not None:
        raw.append((b"content-length", length.encode()))
    else:
        raw.append((b"transfer-encoding", b"chunked"))


def host_for(raw: list[Field], authority: bytes) -> bytes:
    """The Host a service receives: ``raw``'s own (``preserve_host`` kept it) or else
    ``authority``, the target's."""
    for k, v in raw:
        if k == b"host":
            return v
    return authority


def with_host(raw: list[Field], authority: bytes) -> list[Field]:
    """``raw`` with its Host (``host_for``): as it is when it has one, else the target's first."""
    if any(k == b"host" for k, _ in raw):
        return raw
    return [(b"host", authority), *raw]


_TOKEN_LOWER = http.TOKEN_CHARS.translate(None, string.ascii_uppercase.encode())  # what a lower-case name is made of
_NEVER_IN_VALUE = b"\x00\r\x0b\x0c"  # NUL, and whitespace other than SP, HTAB and LF (LFs are counted)


def valid_fields(fields: list[Field]) -> bool:
    """Whether every name is a token, lower-case as ``Headers`` holds names, and every value a
    field-value without NUL, CR or LF, nor whitespace at either end (RFC 9110 5.1, 5.5): the check
    h11 makes of each field it writes (h11._abnf's grammar: a value's bytes are ``[^\\x00\\s]``,
    with runs of SP and HTAB between them). The names, and the values, are joined into lines and
    checked with bytes methods, each a pass in C: for a head of eight fields about 1.4 µs, against
    2.7 for the same grammar as two regular expressions and 7 for h11's own checks; for thirteen
    with a 400-byte token, 2.3 against 5.1.
    docs/upstream/h11-0.16.patch offers h11 a one-pass check (names of any case)."""
    if not fields:
        return True
    name_column, value_column = zip(*fields)  # noqa: B905 (pairs, as typed; strict= adds a fifth)
    between = len(fields) - 1  # LFs joining them
    try:
        names, values = b"\n".join(name_column), b"\n".join(value_column)
        stripped = tuple(map(bytes.strip, value_column))
    except TypeError:  # a name or value that is not bytes (a bytearray a plugin wrote): h11 checks it
        return False
    return (
        names.count(b"\n") == values.count(b"\n") == between  # no LF of their own
        and all(name_column)  # no empty name
        and len(names.translate(None, _TOKEN_LOWER)) == between  # nothing but token characters, and the LFs
        and len(values.translate(None, _NEVER_IN_VALUE)) == len(values)
        and stripped == value_column  # no SP or HTAB at either end
    )


#: The fields h11 acts on in a head it writes (h11 0.16): a request's Host, body framing,
#: keep-alive, Upgrade and Expect; a response's framing and keep-alive.
_H11_READS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"})


def for_h11(fields: list[Field]) -> tuple[list[Field], bytes, bool]:
    """A head's ``fields`` as h11 is to write them: ``(given, lines, parsed)``. When ``valid_fields``
    holds, h11 is given only the fields it acts on and skips its checks (``parsed``: its
    ``_parsed=True``); the others become ``lines``, which follow its own (``with_lines``), in their
    order. Otherwise h11 is given them all, checks them and names the field it refuses."""
    if not valid_fields(fields):
        return fields, b"", False
    try:
        given = [f for f in fields if f[0] in _H11_READS]
    except TypeError:  # a name that is not bytes, so not hashable (a plugin's bytearray): h11 checks it
        return fields, b"", False
    lines = b"".join([name + b": " + value + b"\r\n" for name, value in fields if name not in _H11_READS])
    return given, lines, True


def with_lines(head: bytes, lines: bytes) -> bytes:
    """h11's ``head`` (it ends with the empty line) with ``lines`` (``for_h11``) before that line."""
    return b"".join((head[:-2], lines, b"\r\n"))


_supply, _used = b"", 0  # random bytes for ``new_request_id``, and how many were handed out


def new_request_id() -> str:
    """A new ``X-Request-Id``: 32 hex digits, 16 bytes of the OS's random source, drawn from a
    4 KiB supply (one system call per 256 ids, not one per request)."""
    global _supply, _used
    if _used >= len(_supply):
        _supply, _used = os.urandom(4096), 0
    _used += 16
    return _supply[_used - 16 : _used].hex()


def _forget_supply() -> None:  # a forked child draws its own: two processes never share ids
    global _supply, _used
    _supply, _used = b"", 0


os.register_at_fork(after_in_child=_forget_supply)


def set_trace(headers: Headers, trace: Trace, span_id: str) -> None:
    """Write the W3C ``traceparent`` naming the attempt's span ``span_id``, and the trace's ``tracestate``."""
    if headers.has_any(TRACE_FIELDS):  # the client's, or an earlier attempt's
        headers.raw = [(k, v) for k, v in headers.raw if k not in TRACE_FIELDS]
    raw = headers.raw  # hex ids and a parsed tracestate: nothing for Headers.add to refuse
    raw.append((b"traceparent", trace.traceparent(span_id).encode()))
    if trace.tracestate:
        raw.append((b"tracestate", trace.tracestate.encode()))


def response_headers(headers: Headers) -> None:
    """An upstream response's fields as the gateway passes them on: hop-by-hop ones removed."""
    _strip_hop_by_hop(headers)
