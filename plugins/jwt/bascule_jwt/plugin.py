"""The ``jwt`` plugin: bearer tokens (RFC 7519, RFC 8725) checked at the gateway."""

from __future__ import annotations

from urllib.parse import unquote_plus

import trio
from bascule_sdk import Context, Gateway, HTTPError, Plugin, Request, hookimpl
from bascule_sdk.identity import Anonymous, multiple_credentials, set_identity, single_credential, strip_identity

from .settings import Credentials
from .settings import Settings as JWTSettings
from .verifier import TokenError, Verifier

__all__ = ["JWTPlugin"]


class JWTPlugin(Plugin[JWTSettings]):
    """Verifies a JWT on every request and sets ``ctx.consumer``.

    Answers 401 (``WWW-Authenticate: Bearer``, RFC 6750) when the token is
    missing or invalid, 403 when valid but lacking a required scope (or, with
    ``require_consumer``, matching no declared consumer).
    """

    name = "jwt"
    priority = 1000
    Settings = JWTSettings
    Credentials = Credentials

    def __init__(self, settings: JWTSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self.verifier = Verifier(settings, self.name)
        self._anonymous = Anonymous()
        self._claim_header_names = frozenset(h.lower().encode() for h in settings.claim_headers.values())
        self._bearer = self._challenge()  # the plain challenge: the realm alone
        self._headers = (settings.header,) if settings.header else ()
        self._cookies = (settings.cookie,) if settings.cookie else ()
        self._query = (settings.query,) if settings.query else ()
        self._stopped = trio.Event()

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self._anonymous = Anonymous.named(self.settings.anonymous, gateway, self.instance)
        self.verifier.bind_consumers(gateway.consumers)
        await self.verifier.open()
        if self.verifier.sources:
            gateway.start_soon(self._keep_fresh)

    async def _keep_fresh(self) -> None:
        """Refresh the key sets until ``shutdown``. Supervised: a run that failed
        starts again, and one that starts after ``shutdown`` ends at once."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.verifier.keep_fresh)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    @hookimpl
    async def shutdown(self) -> None:
        self._stopped.set()
        await self.verifier.aclose()

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        if self._claim_header_names:  # the core dropped the client's X-Consumer-* on arrival; not these
            strip_identity(ctx.request.headers, self._claim_header_names)
        if self._anonymous.identified_elsewhere(ctx):
            # "either" mode: an earlier auth plugin already identified the caller. A token sent as well
            # would reach the upstream unverified, next to that identity: two credentials (RFC 6750 §3.1).
            if self._token(ctx.request) is not None:
                raise multiple_credentials(self._bearer)
            return
        s = self.settings
        token = self._token(ctx.request)
        if token is None:
            if self._anonymous.admit(ctx):
                return
            raise HTTPError(401, "A bearer token is required.", {"WWW-Authenticate": self._bearer})
        if len(token) > s.max_token_size:
            raise self._invalid(f"The token is longer than {s.max_token_size} bytes.")
        try:
            verified = await self.verifier.verify(token, lambda: ctx.phase("jwks fetch", self.instance))
        except TokenError as e:
            raise self._invalid(str(e)) from None
        if verified.consumer is None:
            raise HTTPError(403, "The token's subject is not a known consumer.")
        if not verified.scopes.issuperset(s.scopes):
            raise HTTPError(
                403,
                "The token lacks a required scope.",
                {
                    "WWW-Authenticate": self._challenge(
                        "insufficient_scope", "The token lacks a required scope.", " ".join(s.scopes)
                    )
                },
            )
        ctx.consumer = verified.consumer

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        strip_identity(request.headers, self._claim_header_names)
        if ctx.consumer is not None:
            set_identity(request.headers, ctx.consumer, self.settings.claim_headers)

    def _token(self, request: Request) -> str | None:
        """The token from the header, the cookie or the query parameter: the one place it is in.

        More than one (a second field, a second cookie, a header and a cookie...) is a 400
        ``invalid_request`` before anything is verified (``single_credential``, RFC 6750 §2, §3.1).
        A header under another scheme is no token (and still counts as a credential sent).
        """
        s = self.settings
        credential = single_credential(
            request, headers=self._headers, cookies=self._cookies, query=self._query, challenge=self._bearer
        )
        if credential is None or not credential.value:
            return None
        if credential.source == "query":
            return unquote_plus(credential.value) or None
        if credential.source == "cookie" or not s.scheme:
            return credential.value
        scheme, _, token = credential.value.partition(" ")
        if scheme.lower() == s.scheme.lower() and token.strip():
            return token.strip()
        return None

    def _challenge(self, error: str = "", description: str = "", scope: str = "") -> str:
        """An RFC 6750 §3 challenge; every value is a fixed phrase or from config."""
        params = [f'realm="{self.settings.realm}"']
        if error:
            params.append(f'error="{error}"')
        if description:
            params.append(f'error_description="{description}"')
        if scope:
            params.append(f'scope="{scope}"')
        return "Bearer " + ", ".join(params)

    def _invalid(self, description: str) -> HTTPError:
        return HTTPError(401, description, {"WWW-Authenticate": self._challenge("invalid_token", description)})
