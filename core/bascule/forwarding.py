"""Header hygiene between client, gateway and upstream (RFC 9110 section 7.6).

- Hop-by-hop fields (and every field named in ``Connection``) never cross
  the gateway, in either direction.
- Forwarding fields (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``,
  ``X-Request-ID``) from a client are believed only when the connection comes
  from a ``trusted_proxies`` address; otherwise they are dropped on arrival
  and the gateway writes its own.
- Identity fields (``X-Consumer-*``) are only ever written by the gateway's
  auth plugins: a client's copies are dropped on arrival, on every route.
- Nothing is written from a value that was not validated: the Host (``parse_host``)
  and, from a trusted proxy, every member of the forwarding fields it sends
  (``InvalidField`` otherwise, a 400).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from bascule_sdk import Headers

__all__ = ["FORWARDING", "HOP_BY_HOP", "InvalidField", "TrustedProxies", "parse_host", "strip_hop_by_hop"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
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
IDENTITY_PREFIX = b"x-consumer-"
VIA = "1.1 bascule"


class InvalidField(ValueError):
    """A request field the gateway would have to write on, and cannot validate: a 400."""


# RFC 3986 3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ), less ",": a Host
# value with a comma cannot be told from two Host lines combined (RFC 9110 5.3), which
# RFC 9112 3.2 rejects. IPv4address is a reg-name by this grammar.
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})*")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+;=:]+")


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
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
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


def strip_hop_by_hop(headers: Headers) -> None:
    """Remove hop-by-hop fields, including those listed in ``Connection``."""
    raw = headers.raw
    drop = HOP_BY_HOP
    for name, value in raw:
        if name == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",")}
    if any(name in drop for name, _ in raw):
        headers.raw = [(k, v) for k, v in raw if k not in drop]


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
    strip_hop_by_hop(headers)
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
