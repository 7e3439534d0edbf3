"""Header hygiene between client, gateway and upstream (RFC 9110 section 7.6).

- Hop-by-hop fields (and every field named in ``Connection``) never cross
  the gateway, in either direction.
- Forwarding fields (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``,
  ``X-Request-ID``) from a client are believed only when the connection comes
  from a ``trusted_proxies`` address; otherwise they are dropped on arrival
  and the gateway writes its own.
- Identity fields (``X-Consumer-*``) are only ever written by the gateway's
  auth plugins: a client's copies are dropped on arrival, on every route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bascule_sdk import Headers

__all__ = ["FORWARDING", "HOP_BY_HOP", "TrustedProxies", "strip_hop_by_hop"]

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
    ``X-Real-IP``, ``Via`` and ``X-Request-ID``.
    """
    strip_hop_by_hop(headers)
    host = headers.get("host", "")
    if trusted:
        xff = ", ".join(headers.get_all("x-forwarded-for"))
        proto = headers.get("x-forwarded-proto") or scheme
        fwd_host = headers.get("x-forwarded-host") or host
        forwarded = ", ".join(headers.get_all("forwarded"))
        via = ", ".join(headers.get_all("via"))
    else:
        xff = forwarded = via = ""
        proto, fwd_host = scheme, host
    node = f'"[{peer}]"' if ":" in peer else peer
    quoted_host = host.replace('"', "").replace("\\", "")
    own = f"for={node};proto={scheme}" + (f';host="{quoted_host}"' if host else "")
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
