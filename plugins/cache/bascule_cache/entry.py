"""A stored response and the RFC 9111 rules around it: when a response may be
stored (section 3), how long it is fresh (4.2) and how a stored one may answer (4.2.4)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum

from bascule_sdk import HOP_BY_HOP, Headers, HTTPError, Response

from .control import (
    HEURISTIC_STATUSES,
    UNDERSTOOD_STATUSES,
    Directives,
    age_value,
    delta_seconds,
    directives,
    http_date,
    parse_vary,
    select_directives,
)

__all__ = [
    "CONDITIONALS",
    "Entry",
    "Policy",
    "Use",
    "freshness_lifetime",
    "read_entry",
    "serves_on_error",
    "shareable",
    "storable",
    "usable",
]

#: A request's conditional fields (RFC 9110 section 13.1).
CONDITIONALS = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range")
# Header fields a 304 must not overwrite in the stored response (RFC 9111 section 3.2).
_KEEP_ON_MERGE = frozenset({b"content-length", b"transfer-encoding", b"x-cache-status"})
# Never stored (RFC 9111 section 3.1): connection-specific fields, and what only
# concerns the one exchange or the one user.
_NOT_STORED = (
    *HOP_BY_HOP,
    "proxy-authentication-info",
    "age",
    "x-cache-status",
    "set-cookie",
    "x-request-id",
)


@dataclass(frozen=True)
class Policy:
    """The operator's storage and freshness rules (from settings)."""

    default_ttl: float = 0.0
    heuristic_max: float = 86400.0
    #: Targeted cache-control fields (RFC 9213) this cache obeys, lower-cased, first wins.
    targets: tuple[str, ...] = ()
    #: Statuses that may be stored; ``None``: any final status but 206 and 304.
    statuses: frozenset[int] | None = None
    #: Media types that may be stored, lower-cased; empty: any.
    content_types: frozenset[str] = frozenset()
    store_set_cookie: bool = False
    #: How long a stale entry with validators is kept for revalidation.
    keep_stale: float = 0.0
    #: The largest body stored.
    max_object_size: int = 1024**2


def shareable(cc: Directives) -> bool:
    """RFC 9111 section 3.5: may a response with directives ``cc`` be stored from, and served
    to, a request with Authorization?"""
    return not _SHAREABLE.isdisjoint(cc.keys())


_SHAREABLE = frozenset({"public", "s-maxage", "must-revalidate"})


def storable(status: int, request: Headers, response: Headers, policy: Policy) -> bool:
    """RFC 9111 section 3 with the operator's policy: may the response to a GET be stored?

    Its size is the caller's to check.
    """
    if status in (206, 304) or status < 200 or (policy.statuses is not None and status not in policy.statuses):
        return False
    control, cc = select_directives(response, policy.targets)
    if "must-understand" in cc:
        # Stored only if the cache understands the status; then section 5.2.2.3:
        # no-store is ignored, as the status's own rules apply.
        if status not in UNDERSTOOD_STATUSES:
            return False
    elif "no-store" in cc:
        return False
    if "private" in cc and cc["private"] is None:  # qualified private: the fields are left out
        return False
    if "authorization" in request and not shareable(cc):
        return False
    if "set-cookie" in response and not policy.store_set_cookie:
        return False
    if parse_vary(response.get_all("vary")) == ("*",):
        return False
    if policy.content_types:
        media = (response.get("content-type") or "").split(";")[0].strip().lower()
        if media not in policy.content_types:
            return False
    explicit = {"max-age", "s-maxage", "public"} & cc.keys() or (control == "cache-control" and "expires" in response)
    return bool(explicit) or status in HEURISTIC_STATUSES


def freshness_lifetime(status: int, headers: Headers, response_time: float, policy: Policy) -> float:
    """RFC 9111 section 4.2.1 for a shared cache: s-maxage, max-age, Expires - Date, heuristic.

    With a valid targeted field (RFC 9213), its directives replace Cache-Control and Expires.
    """
    control, cc = select_directives(headers, policy.targets)
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            value = delta_seconds(cc[directive])
            return float(value) if value is not None else 0.0
    date = http_date(headers.get("date"))
    date = response_time if date is None else date
    expires = headers.get_all("expires") if control == "cache-control" else []
    if expires:
        at = http_date(expires[0])
        return max(0.0, at - date) if at is not None else 0.0
    if status in HEURISTIC_STATUSES or "public" in cc:
        modified = http_date(headers.get("last-modified"))
        if modified is not None and modified <= date:
            return min(0.1 * (date - modified), policy.heuristic_max)
        return policy.default_ttl
    return 0.0


@dataclass
class Entry:
    """A response as stored: status, header pairs, body, and its timing.

    ``initial_age`` is the corrected initial age (RFC 9111 section 4.2.3),
    ``response_time`` the moment the response arrived; the current age at
    ``now`` is ``initial_age + now - response_time``. ``keep_until`` is when
    the store may forget it. ``upstream`` is the ``(path, query, host)`` the
    request was sent upstream with, for background refresh. ``control`` is the
    field whose directives apply: ``cache-control``, or a targeted field.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    response_time: float
    initial_age: float
    lifetime: float
    keep_until: float = 0.0
    upstream: tuple[str, str, bool] | None = None
    control: str = "cache-control"
    cc: dict[str, str | None] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.cc = directives(self.view, self.control)

    @classmethod
    def from_response(
        cls,
        status: int,
        headers: Headers,
        body: bytes,
        request_time: float,
        response_time: float,
        policy: Policy,
    ) -> Entry:
        """Capture a response received at ``response_time`` for a request sent at ``request_time``."""
        date = http_date(headers.get("date"))
        apparent_age = max(0.0, response_time - date) if date is not None else 0.0
        corrected_age = age_value(headers.get("age")) + max(0.0, response_time - request_time)
        stored = headers.copy()
        stored.remove(*_NOT_STORED)
        control, cc = select_directives(headers, policy.targets)
        for directive in ("no-cache", "private"):  # qualified forms: never store the listed fields
            if cc.get(directive):
                stored.remove(*(f.strip() for f in (cc[directive] or "").split(",") if f.strip()))
        return cls(
            status,
            stored.raw,
            body,
            response_time,
            max(apparent_age, corrected_age),
            freshness_lifetime(status, stored, response_time, policy),
            control=control,
        )

    @property
    def view(self) -> Headers:
        return Headers(self.headers)

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def header(self, name: str) -> str | None:
        return self.view.get(name)

    @property
    def validators(self) -> dict[str, str]:
        """Conditional request fields that revalidate this entry."""
        found = {}
        if etag := self.header("etag"):
            found["if-none-match"] = etag
        if modified := self.header("last-modified"):
            found["if-modified-since"] = modified
        return found

    def validate_with(self, request: Headers) -> None:
        """Make ``request`` ask the upstream whether this entry is still current (RFC 9111
        section 4.3.1): the client's own conditional fields replaced by its validators."""
        request.remove(*CONDITIONALS)
        for name, value in self.validators.items():
            request.set(name, value)

    @property
    def no_cache(self) -> bool:
        """Unqualified ``no-cache``: validate before every use."""
        return "no-cache" in self.cc and self.cc["no-cache"] is None

    @property
    def may_serve_stale(self) -> bool:
        """False when a directive forbids serving it stale (s-maxage implies proxy-revalidate)."""
        return not (self.no_cache or {"must-revalidate", "proxy-revalidate", "s-maxage"} & self.cc.keys())

    def stale_window(self, directive: str) -> float:
        """The ``stale-while-revalidate`` / ``stale-if-error`` window, 0 if none."""
        return float(delta_seconds(self.cc.get(directive)) or 0)

    def keep_for(self, now: float, policy: Policy) -> float:
        """Seconds the store keeps this entry from ``now``: while fresh, then as long as it
        may be served stale, or kept for revalidation when it has validators."""
        extra = max(self.stale_window("stale-while-revalidate"), self.stale_window("stale-if-error"))
        if self.validators:
            extra = max(extra, policy.keep_stale)
        return max(0.0, self.lifetime - self.age(now)) + extra

    def merged(self, headers: Headers, request_time: float, response_time: float, policy: Policy) -> Entry:
        """This entry freshened by a 304's header fields (RFC 9111 sections 3.2 and 4.3.4)."""
        update = {k for k, _ in headers.raw} - _KEEP_ON_MERGE
        raw = [(k, v) for k, v in self.headers if k not in update]
        raw += [(k, v) for k, v in headers.raw if k in update]
        fresh = Entry.from_response(self.status, Headers(raw), self.body, request_time, response_time, policy)
        return replace(fresh, upstream=self.upstream)

    def encode(self) -> bytes:
        head = {
            "s": self.status,
            "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
            "t": self.response_time,
            "a": self.initial_age,
            "l": self.lifetime,
            "k": self.keep_until,
            "u": self.upstream,
        }
        if self.control != "cache-control":
            head["c"] = self.control
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        head, _, body = data.partition(b"\n")
        h = json.loads(head)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h["h"]]
        upstream = tuple(h["u"]) if h.get("u") else None
        return cls(h["s"], headers, body, h["t"], h["a"], h["l"], h["k"], upstream, h.get("c", "cache-control"))


async def read_entry(
    request: Headers, response: Response, request_time: float, now: float, policy: Policy
) -> Entry | None:
    """The response to a GET as an entry, when ``storable`` and its body fits ``max_object_size``.

    Reads the body only when its length is known and within the limit; 502 when it is cut short.
    """
    if not storable(response.status, request, response.headers, policy):
        return None
    limit = policy.max_object_size
    body = response.body
    if not isinstance(body, bytes):
        length = response.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > limit:
            return None
        try:
            body = await response.read(limit)
        except Exception:
            raise HTTPError(502, "The upstream response was cut short.") from None
    elif len(body) > limit:
        return None
    return Entry.from_response(response.status, response.headers, body, request_time, now, policy)


class Use(Enum):
    """How a stored response may answer a request."""

    FRESH = "fresh"  #: serve it
    STALE = "stale"  #: serve it stale: the request allows it (max-stale)
    STALE_REFRESH = "stale-refresh"  #: serve it stale and revalidate it meanwhile (stale-while-revalidate)
    FORWARD = "forward"  #: ask the upstream, conditionally when it has validators


def usable(entry: Entry | None, request_cc: Directives, now: float) -> Use:
    """RFC 9111 section 4.2 (freshness) and 4.2.4 (serving stale), with the request's
    directives (section 5.2.1) and RFC 5861 ``stale-while-revalidate``: how ``entry`` may
    answer a request with ``request_cc`` at ``now``."""
    if entry is None:
        return Use.FORWARD
    age = entry.age(now)
    validate = "no-cache" in request_cc or entry.no_cache
    if "max-age" in request_cc:
        max_age = delta_seconds(request_cc["max-age"])
        validate = validate or max_age is None or age > max_age
    if "min-fresh" in request_cc:
        min_fresh = delta_seconds(request_cc["min-fresh"])
        validate = validate or min_fresh is None or entry.lifetime - age < min_fresh
    if validate:
        return Use.FORWARD
    if entry.lifetime > age:
        return Use.FRESH
    if not entry.may_serve_stale:
        return Use.FORWARD
    staleness = age - entry.lifetime
    if "max-stale" in request_cc:
        allowed = delta_seconds(request_cc["max-stale"])
        if request_cc["max-stale"] is None or (allowed is not None and staleness <= allowed):
            return Use.STALE
    if staleness <= entry.stale_window("stale-while-revalidate"):
        return Use.STALE_REFRESH
    return Use.FORWARD


def serves_on_error(entry: Entry, request_cc: Directives, now: float) -> bool:
    """RFC 9111 section 4.2.4 with RFC 5861 ``stale-if-error`` (of the response or the
    request): may ``entry`` answer in place of an upstream's 5xx at ``now``?"""
    if not entry.may_serve_stale:
        return False
    staleness = entry.age(now) - entry.lifetime
    window = max(entry.stale_window("stale-if-error"), float(delta_seconds(request_cc.get("stale-if-error")) or 0))
    return staleness <= window
