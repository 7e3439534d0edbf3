"""The ``key-auth`` plugin: API keys, stored hashed, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import unquote_plus, unquote_to_bytes

from bascule_sdk import Consumer, Context, Gateway, HTTPError, Plugin, Request, hookimpl
from bascule_sdk.identity import (
    Anonymous,
    Credential,
    multiple_credentials,
    set_identity,
    single_credential,
    strip_identity,
)

from .settings import Credentials, parse_hashed_key
from .settings import Settings as KeyAuthSettings

__all__ = ["KeyAuthPlugin"]

# RFC 9110 §11.4: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?: +(.*))?", re.S)
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")


class KeyAuthPlugin(Plugin[KeyAuthSettings]):
    """Identifies the consumer by an API key in a header or query parameter.

    Answers 401 when the key is missing (unless ``anonymous`` is set), too
    long, or unknown. The key is never echoed back.
    """

    name = "key-auth"
    priority = 1010  # before jwt, so a route may accept either (see README)
    Settings = KeyAuthSettings
    Credentials = Credentials

    def __init__(self, settings: KeyAuthSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self._index: dict[bytes, list[tuple[bytes, Consumer]]] = {}  # digest[:4] -> (digest, consumer)
        self._anonymous = Anonymous()
        self._query = frozenset(settings.query)
        # Every header the key may be in; with a scheme, Authorization (RFC 9110 §11.6.2) comes first.
        headers = [h for h in settings.headers if not (settings.scheme and h.lower() == "authorization")]
        self._headers = tuple((["Authorization"] if settings.scheme else []) + headers)
        self._challenge = f'{settings.scheme or "APIKey"} realm="{settings.realm}"'

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self._anonymous = Anonymous.named(self.settings.anonymous, gateway, self.instance)
        owners: dict[bytes, Consumer] = {}
        for consumer in gateway.consumers.values():
            creds: Credentials | None = consumer.credentials.get(self.name)
            for key in creds.keys if creds else ():
                digest = parse_hashed_key(key)
                if owners.get(digest, consumer) is not consumer:
                    raise ValueError(f"consumers {owners[digest].name!r} and {consumer.name!r} share an API key")
                owners[digest] = consumer
        index: dict[bytes, list[tuple[bytes, Consumer]]] = {}
        for digest, consumer in owners.items():
            index.setdefault(digest[:4], []).append((digest, consumer))
        self._index = index

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        # No identity field of the client's is left (the core drops them on arrival); the
        # request sent upstream gets this plugin's (on_upstream_request).
        if self._anonymous.identified_elsewhere(ctx):
            # "either" mode: an earlier auth plugin already identified the caller. A key sent as well
            # would reach the upstream unverified, next to that identity: two credentials (RFC 6750 §3.1).
            if self._key(ctx.request) is not None:
                raise multiple_credentials(self._challenge)
            return
        key = self._key(ctx.request)
        if key is None:
            if self._anonymous.admit(ctx):
                return
            raise self._unauthorized("An API key is required.")
        if len(key) > self.settings.max_key_size:
            raise self._unauthorized(f"The API key is longer than {self.settings.max_key_size} bytes.", True)
        consumer = self._lookup(key)
        if consumer is None:
            raise self._unauthorized("The API key is not valid.", True)
        ctx.consumer = consumer
        if self.settings.hide_credentials:
            self._hide(ctx.request)

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        strip_identity(request.headers)
        if ctx.consumer is not None:
            set_identity(request.headers, ctx.consumer)

    def _key(self, request: Request) -> bytes | None:
        """The key as the client sent its bytes, from the one place it is in.

        More than one (a header twice, two of the headers, a header and a query parameter, a
        comma-joined field) is a 400 ``invalid_request`` before any lookup (``single_credential``).
        """
        credential = single_credential(request, headers=self._headers, query=self._query, challenge=self._challenge)
        if credential is None or not credential.value:
            return None
        if credential.source == "query":
            return unquote_to_bytes(credential.value.replace("+", " "))
        if self.settings.scheme and credential.name == "Authorization":
            return self._scheme_key(credential)
        return credential.value.encode("latin-1")

    def _scheme_key(self, credential: Credential) -> bytes | None:
        """``<scheme> 1*SP token68`` (RFC 9110 §11.1, §11.4: the scheme case-insensitive).

        Another scheme, or the scheme alone, is no key; other credentials under it are an invalid key.
        """
        m = _CREDENTIALS.fullmatch(credential.value)
        if m is None or m.group(1).lower() != self.settings.scheme.lower() or not m.group(2):
            return None
        if not _TOKEN68.fullmatch(m.group(2)):
            raise self._unauthorized("The API key is not valid.", True)
        return m.group(2).encode("latin-1")

    def _lookup(self, key: bytes) -> Consumer | None:
        """The consumer owning ``key``, or None.

        Only SHA-256 digests are handled: the index lookup on the first four
        bytes of the digest can tell an attacker nothing but what hashing their
        own guess already does, and every full comparison is constant-time.
        """
        digest = hashlib.sha256(key).digest()
        found = None
        for stored, consumer in self._index.get(digest[:4], ()):
            if hmac.compare_digest(stored, digest):
                found = consumer
        return found

    def _hide(self, request: Request) -> None:
        request.headers.remove(*self._headers)
        if self._query and request.query:
            request.query = "&".join(
                part
                for part, (name, _) in zip(request.query.split("&"), _query_pairs(request.query), strict=True)
                if name not in self._query
            )

    def _unauthorized(self, detail: str, invalid: bool = False) -> HTTPError:
        """401 with the challenge; under a ``scheme``, an invalid key says so (RFC 6750 §3.1 ``invalid_token``)."""
        challenge = self._challenge
        if invalid and self.settings.scheme:
            challenge += f', error="invalid_token", error_description="{detail}"'
        return HTTPError(401, detail, {"WWW-Authenticate": challenge})


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``(decoded name, raw value)`` per ``&``-separated part (one pair per part)."""
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name), value))
    return pairs
