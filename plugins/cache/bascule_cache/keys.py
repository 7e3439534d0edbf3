"""Cache keys: the URI a response is stored under (RFC 9111 section 2) and the URIs
an unsafe request invalidates (section 4.4)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from bascule_sdk import Headers, Request

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """The primary keys of a route's cache, with its query parameter selection."""

    #: Query parameters kept in the key (sorted); ``None``: the whole query as sent.
    query_params: frozenset[str] | None = None
    #: Query parameters left out of the key.
    ignore_query_params: frozenset[str] = frozenset()

    def primary(self, scheme: str, host: str, path: str, query: str) -> str:
        """``scheme://host/path?query`` with the configured query parameter selection."""
        if self.query_params is not None or self.ignore_query_params:
            pairs = parse_qsl(query, keep_blank_values=True)
            if self.query_params is not None:
                pairs = [p for p in pairs if p[0] in self.query_params]
            pairs = sorted(p for p in pairs if p[0] not in self.ignore_query_params)
            query = urlencode(pairs)
        return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")

    def invalidated(self, request: Request, response: Headers) -> list[str]:
        """RFC 9111 section 4.4: the keys a successful unsafe ``request`` invalidates, its
        target URI's and those of ``Location`` and ``Content-Location`` on the same origin."""
        keys = [self.primary(request.scheme, request.host, request.path, request.query)]
        base = f"{request.scheme}://{request.host}{request.path}"
        for name in ("location", "content-location"):
            if value := response.get(name):
                url = urlsplit(urljoin(base, value.strip()))
                if url.scheme == request.scheme and (url.hostname or "") == request.host:
                    keys.append(self.primary(url.scheme, request.host, url.path or "/", url.query))
        return keys
