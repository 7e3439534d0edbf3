"""The settings of the cors plugin, and which origins, methods and headers they allow."""

from __future__ import annotations

from dataclasses import dataclass, field

from bascule_sdk import TOKEN, Duration, HeaderName, setting

__all__ = ["CORSSettings"]

# "*", "null" or scheme://host[:port], host possibly "*.example.com", in any case, trailing "/" allowed.
_ORIGIN = r"^(\*|[Nn][Uu][Ll][Ll]|[A-Za-z][A-Za-z0-9+.-]*://(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?)/*$"
_METHOD = rf"^{TOKEN}$"  # RFC 9110 method: a token ("*", any, is one too)


@dataclass(frozen=True)
class CORSSettings:
    """``[routes.plugins.cors]``: who may call this route from a browser."""

    origins: list[str] = setting(
        ["*"],
        'Allowed origins: "https://app.example.com", "https://*.example.com", or "*" for any.',
        pattern=_ORIGIN,
        expected='"*" or an origin like "https://app.example.com"',
    )
    methods: list[str] = setting(
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        'Methods allowed cross-origin ("*": any).',
        pattern=_METHOD,
        expected='a method or "*"',
    )
    headers: list[HeaderName] = setting(
        [], 'Request headers a page may send (beyond the CORS-safelisted ones; "*": any).'
    )
    expose_headers: list[HeaderName] = setting([], "Response headers a page may read beyond the safelisted ones.")
    credentials: bool = setting(False, 'Allow cookies and Authorization (needs explicit origins, not "*").')
    max_age: Duration | None = setting(None, 'How long a browser may cache a preflight answer, e.g. "10m".')
    # Derived once: lower-case lookups used per request.
    any_origin: bool = field(init=False, repr=False)
    exact_origins: frozenset[str] = field(init=False, repr=False)
    origin_suffixes: tuple[tuple[str, str], ...] = field(init=False, repr=False)
    method_set: frozenset[str] = field(init=False, repr=False)
    header_set: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        exact, suffixes = set(), []
        for origin in self.origins:
            value = origin.rstrip("/").lower()
            if "://*." in value:
                scheme, _, rest = value.partition("://*")
                suffixes.append((scheme + "://", rest))  # ".example.com[:port]"
            else:
                exact.add(value)
        if self.credentials and "*" in exact:
            raise ValueError('credentials: true needs explicit origins; "*" would let every site send cookies')
        set_ = object.__setattr__
        set_(self, "any_origin", "*" in exact)
        set_(self, "exact_origins", frozenset(exact - {"*"}))
        set_(self, "origin_suffixes", tuple(suffixes))
        set_(self, "method_set", frozenset(m.upper() for m in self.methods))
        set_(self, "header_set", frozenset(h.lower() for h in self.headers))

    def allows_origin(self, origin: str) -> bool:
        """Whether a request from ``origin`` (the ``Origin`` header's value) is allowed."""
        if self.any_origin or origin in self.exact_origins:
            return True
        for scheme, suffix in self.origin_suffixes:
            # "https://*.example.com" allows "https://a.example.com", not "https://example.com".
            if origin.startswith(scheme) and origin.endswith(suffix) and len(origin) > len(scheme) + len(suffix):
                subdomain = origin[len(scheme) : -len(suffix)]
                if ":" not in subdomain and "/" not in subdomain:
                    return True
        return False

    def allows_method(self, method: str) -> bool:
        return "*" in self.method_set or method in self.method_set

    def allows_header(self, name: str) -> bool:
        return "*" in self.header_set or name in self.header_set
