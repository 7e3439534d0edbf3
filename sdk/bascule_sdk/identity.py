"""What auth plugins share: the one credential a request may carry, and the
identity headers they send upstream (``X-Consumer-*``).

The core drops a client's copies of the identity headers on arrival, on every
route; an auth plugin strips again before it writes (another plugin may have
added some) and sets the consumer it authenticated.

An auth plugin reads its credential with ``single_credential``: a request that
carries it more than once (twice the same field, a field and a cookie, two
fields joined with a comma...) is refused with 400 before anything trusts it,
so the credential a plugin verified is the only one the upstream can see.

``Anonymous`` is what an auth plugin's ``anonymous = "NAME"`` setting means,
for every auth plugin alike."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Literal, NamedTuple
from urllib.parse import quote, unquote_plus

from .context import Consumer, Context, Gateway
from .http import Headers, HTTPError, Request, _key

__all__ = [
    "MULTIPLE_CREDENTIALS",
    "PREFIX",
    "Anonymous",
    "Credential",
    "header_value",
    "multiple_credentials",
    "set_identity",
    "single_credential",
    "strip_identity",
]

PREFIX = b"x-consumer-"  # the identity headers' names; the core drops a client's on arrival
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def strip_identity(headers: Headers, extra: Collection[bytes] = frozenset()) -> None:
    """Drop every ``X-Consumer-*`` field and the ``extra`` names (lower-case bytes; a frozenset
    a plugin builds once). Nothing is copied when there is nothing to drop."""
    raw = headers.raw
    for name, _ in raw:
        if name.startswith(PREFIX) or name in extra:
            headers.raw = [(k, v) for k, v in raw if not (k.startswith(PREFIX) or k in extra)]
            return


def header_value(value: Any) -> str:
    """A claim or name as a header value: arrays comma-joined, objects as JSON.

    Text outside printable ASCII is percent-encoded (as is ``%``), so a value
    can never split or corrupt a header.
    """
    if isinstance(value, list):
        text = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    return quote(text, safe=_PRINTABLE)


def set_identity(headers: Headers, consumer: Consumer, claim_headers: Mapping[str, str] | None = None) -> None:
    """Add ``X-Consumer-Id``, ``-Username``, ``-Groups`` and the chosen claims.

    Call ``strip_identity`` on ``headers`` first: fields are added, not replaced.
    """
    headers.raw += _identity_fields(consumer.id or consumer.name, consumer.name, frozenset(consumer.groups))
    for claim, header in (claim_headers or {}).items():
        value = consumer.claims.get(claim)
        if value is not None:
            headers.add(header, header_value(value))


@lru_cache(maxsize=1024)  # a consumer's fields are the same on each of its requests: made once
def _identity_fields(id: str, name: str, groups: frozenset[str]) -> tuple[tuple[bytes, bytes], ...]:
    """``X-Consumer-Id``, ``-Username`` and ``-Groups`` (when there are groups), as raw fields."""
    fields = Headers()
    fields.add("x-consumer-id", header_value(id))
    fields.add("x-consumer-username", header_value(name))
    if groups:
        fields.add("x-consumer-groups", header_value(sorted(groups)))
    return tuple(fields.raw)


MULTIPLE_CREDENTIALS = "The request carries more than one credential."


# A NamedTuple, as immutable as a frozen dataclass and made (on every request) in a third of its time.
class Credential(NamedTuple):
    """The one credential a request carries, and where it was found.

    ``source`` is ``"header"``, ``"cookie"`` or ``"query"``; ``name`` is the
    name as the plugin gave it. ``value`` is the header field value without
    surrounding whitespace, the cookie value without surrounding double quotes,
    or the query parameter value as sent (still percent-encoded: decode it the
    way your credential needs, e.g. ``urllib.parse.unquote_plus``). It may be
    empty (``apikey:`` or ``?token=``): treat that as no credential.
    """

    source: Literal["header", "cookie", "query"]
    name: str
    value: str


def single_credential(
    request: Request,
    *,
    headers: Iterable[str] = (),
    cookies: Iterable[str] = (),
    query: Iterable[str] = (),
    challenge: str = "",
) -> Credential | None:
    """The credential ``request`` carries in the given places, if any, provided it carries only one.

    ``headers`` are field names (any case), ``cookies`` cookie names and
    ``query`` query parameter names (case-sensitive, compared once
    percent-decoded): every place the calling plugin reads a credential from.
    Returns ``None`` when there is none. Raises ``HTTPError(400)`` (detail
    ``MULTIPLE_CREDENTIALS``) when there is more than one of them, counting:

    - each field line of a listed header (RFC 9110 §11.6.2: ``Authorization``
      is a singleton field), and each comma-separated member of one (a
      credential never contains a comma: two fields joined into one, as RFC
      9110 §5.3 lets an intermediary do, are two credentials);
    - each cookie of a listed name, across every ``Cookie`` field (RFC 6265
      §5.4; HTTP/2 may split them, RFC 9113 §8.2.3);
    - each query parameter of a listed name;

    whatever their values (empty, equal or not). RFC 6750 §2 says a client
    MUST NOT send a token by more than one method, and §3.1 answers a request
    that does, or that repeats a parameter, with 400 ``invalid_request``.

    ``challenge`` is the plugin's ``WWW-Authenticate`` challenge, scheme and
    realm (``'Bearer realm="api"'``); the 400 carries it with
    ``error="invalid_request"`` and ``error_description`` added (RFC 6750 §3).
    Call this before trusting any of these places; then a request that gets
    through forwards, at most, the one credential the plugin verified.
    """
    found: list[Credential] = []
    wanted_cookies = frozenset(cookies)  # a frozenset given is not copied, nor a tuple below
    fields = _field_names(tuple(headers), bool(wanted_cookies))
    for key, raw in request.headers.raw:
        if key not in fields:  # most fields: one lookup each
            continue
        value = raw.decode("latin-1")
        if key == b"cookie" and wanted_cookies:
            for pair in value.split(";"):
                cookie, eq, cookie_value = pair.strip().partition("=")
                if eq and cookie.strip() in wanted_cookies:
                    found.append(Credential("cookie", cookie.strip(), cookie_value.strip().strip('"')))
        name = fields[key]
        if name is None:
            continue  # Cookie read for its cookies only
        if "," in value:
            raise multiple_credentials(challenge)
        found.append(Credential("header", name, value.strip()))
    wanted_query = frozenset(query)
    if wanted_query and request.query:
        for part in request.query.split("&"):
            param, _, param_value = part.partition("=")
            param = unquote_plus(param)
            if param in wanted_query:
                found.append(Credential("query", param, param_value))
    if len(found) > 1:
        raise multiple_credentials(challenge)
    return found[0] if found else None


@lru_cache(maxsize=256)
def _field_names(headers: tuple[str, ...], cookie: bool) -> Mapping[bytes, str | None]:
    """The fields ``single_credential`` reads, as they arrive (lower-case bytes): each of ``headers``
    to the name given, and ``Cookie`` (to ``None`` unless listed) when ``cookie``."""
    fields: dict[bytes, str | None] = {_key(name): name for name in headers}
    if cookie:
        fields.setdefault(b"cookie", None)
    return MappingProxyType(fields)


def multiple_credentials(challenge: str = "") -> HTTPError:
    """The 400 ``invalid_request`` error ``single_credential`` raises (see there for ``challenge``).

    Raise it yourself for a conflict only your plugin can see, e.g. a request
    already identified by another auth plugin that also carries your credential.
    """
    headers = {}
    if challenge:
        sep = ", " if " " in challenge.strip() else " "  # after auth-params, or after a bare scheme
        params = f'error="invalid_request", error_description="{MULTIPLE_CREDENTIALS}"'
        headers["WWW-Authenticate"] = f"{challenge.strip()}{sep}{params}"
    return HTTPError(400, MULTIPLE_CREDENTIALS, headers)


@dataclass(frozen=True)
class Anonymous:
    """The consumer an auth plugin admits a request without its credential as (``anonymous = "NAME"``).

    With one, the plugin's routes serve anonymous callers as that consumer
    (``admit``), and a request that an earlier auth plugin identified as
    someone else passes on (``identified_elsewhere``): a route may then accept
    either plugin's credential. Such a request that carries this plugin's
    credential too is refused (``multiple_credentials``): the upstream would get
    an unverified credential next to the identity. Without one (``""``: the
    default, ``Anonymous()``), every request needs the credential.
    """

    consumer: Consumer | None = None

    @classmethod
    def named(cls, name: str, gateway: Gateway, instance: str) -> Anonymous:
        """The setting ``anonymous = name`` of plugin ``instance`` at ``startup``: ``ValueError``
        (which stops the config) when ``name`` is not declared under ``[consumers]``."""
        if not name:
            return cls()
        if name not in gateway.consumers:
            raise ValueError(f"plugin {instance!r}: anonymous consumer {name!r} is not declared under [consumers]")
        return cls(gateway.consumers[name])

    def identified_elsewhere(self, ctx: Context) -> bool:
        """Whether anonymous callers are admitted and an earlier auth plugin identified this request."""
        return self.consumer is not None and ctx.consumer is not None and ctx.consumer is not self.consumer

    def admit(self, ctx: Context) -> bool:
        """For a request without the credential: identify it as the anonymous consumer, if there is one
        (``True``); ``False``: the plugin answers 401."""
        if self.consumer is None:
            return False
        ctx.consumer = self.consumer
        return True
