"""bascule-jwt over real sockets: a real gateway, a real upstream, a real JWKS server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import traceback

import jwt
import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from bascule_jwt import JWTPlugin
from bascule_jwt.mint import main as mint_main
from bascule_jwt.mint import mint
from bascule_sdk import Response
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "s" * 64  # long enough for HS512
ISS = "https://idp.test"
AUD = "bascule"


def _pem_public(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _pem_private(private) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}
ED = ed25519.Ed25519PrivateKey.generate()


def token(key=SECRET, alg="HS256", kid=None, **claims) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict, signature: bytes = b"x") -> str:
    payload = {"sub": "mallory", "iss": ISS, "aud": AUD, "exp": int(time.time()) + 600}
    return f"{b64(header)}.{b64(payload)}.{b64(signature)}"


def bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


def route(upstream, plugin_table: str, name: str = "orders", path: str = "/api/orders") -> str:
    return f"""
        [services.{name}]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "{name}"
        paths = ["{path}"]
        service = "{name}"
        [routes.plugins.jwt]
        {plugin_table}
    """


BASIC = f"""
    issuers = ["{ISS}"]
    audiences = ["{AUD}"]
    keys = [{{ secret = "{SECRET}", algorithms = ["HS256"] }}]
"""


async def serve(nursery, config: str):
    """A gateway with this plugin only (other installed plugins stay out of these tests)."""
    return await start_gateway(nursery, config, plugins=[JWTPlugin], entry_points=False)


def assert_invalid(r, description_part: str = "") -> None:
    """A 401 invalid_token answer that does not echo the token."""
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 401
    assert description_part in r.json()["detail"]
    assert f'error_description="{r.json()["detail"]}"' in challenge


# --- algorithms ------------------------------------------------------------------------------------------


async def test_every_algorithm_verifies_with_a_key_bound_to_it(nursery, tmp_path):
    pem_files = {}
    for name, private in [
        ("rsa", RSA),
        ("ES256", EC["ES256"]),
        ("ES384", EC["ES384"]),
        ("ES512", EC["ES512"]),
        ("ed", ED),
    ]:
        pem_files[name] = tmp_path / f"{name}.pem"
        pem_files[name].write_text(_pem_public(private))
    upstream = await start_upstream(nursery)
    rsa_algs = json.dumps(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        keys = [
          {{ kid = "hs", secret = "{SECRET}", algorithms = ["HS256", "HS384", "HS512"] }},
          {{ kid = "rsa", pem = "file:{pem_files["rsa"]}", algorithms = {rsa_algs} }},
          {{ kid = "ES256", pem = "file:{pem_files["ES256"]}" }},
          {{ kid = "ES384", pem = "file:{pem_files["ES384"]}" }},
          {{ kid = "ES512", pem = "file:{pem_files["ES512"]}" }},
          {{ kid = "ed", pem = "file:{pem_files["ed"]}", algorithms = ["EdDSA"] }},
        ]
    """,
        ),
    )
    cases = [(SECRET, a, "hs") for a in ("HS256", "HS384", "HS512")]
    cases += [(RSA, a, "rsa") for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")]
    cases += [(EC[a], a, a) for a in ("ES256", "ES384", "ES512")] + [(ED, "EdDSA", "ed")]
    async with gw.client() as client:
        for key, alg, kid in cases:
            r = await client.get("/api/orders", headers=bearer(token(key, alg, kid, sub=f"user-{alg}")))
            assert r.status_code == 200, (alg, r.text)
            assert upstream.requests[-1].header("x-consumer-id") == f"user-{alg}"
        # A key verifies only the algorithms it is bound to: ES256 key, ES384 token.
        r = await client.get("/api/orders", headers=bearer(token(EC["ES384"], "ES384", "ES256")))
        assert_invalid(r, "No known key")
    assert len(upstream.requests) == len(cases)


async def test_alg_none_in_any_casing_is_rejected(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC))
    async with gw.client() as client:
        for alg in ("none", "None", "NONE", "nOnE"):
            r = await client.get("/api/orders", headers=bearer(forged({"alg": alg, "typ": "JWT"})))
            assert_invalid(r, "algorithm is not allowed")
            # The unsigned form (empty signature segment) is malformed outright.
            r = await client.get("/api/orders", headers=bearer(forged({"alg": alg}, b"")))
            assert_invalid(r, "malformed")
    assert upstream.requests == []


async def test_hs256_signed_with_the_rsa_public_key_is_rejected(nursery, tmp_path):
    pem = _pem_public(RSA)
    (tmp_path / "rsa.pem").write_text(pem)
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        keys = [{{ kid = "rsa", pem = "file:{tmp_path / "rsa.pem"}" }},
                {{ secret = "{SECRET}" }}]
    """,
        ),
    )
    async with gw.client() as client:
        for header in ({"alg": "HS256", "kid": "rsa"}, {"alg": "HS256"}):
            head_payload = forged(header).rsplit(".", 1)[0]
            signature = hmac.new(pem.encode(), head_payload.encode(), hashlib.sha256).digest()
            r = await client.get("/api/orders", headers=bearer(f"{head_payload}.{b64(signature)}"))
            assert_invalid(r)
        r = await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "rsa")))
        assert r.status_code == 200
    assert len(upstream.requests) == 1


async def test_bad_tokens_are_401_and_never_echoed(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC))
    now = int(time.time())
    good = token()
    head, payload, signature = good.split(".")
    tampered_sig = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    tampered_payload = b64({"sub": "admin", "iss": ISS, "aud": AUD, "exp": now + 600})
    cases = {
        "expired": (token(exp=now - 3600), "expired"),
        "not yet valid (nbf)": (token(nbf=now + 3600), "not valid yet"),
        "issued in the future": (token(iat=now + 3600), "not valid yet"),
        "wrong iss": (token(iss="https://evil.test"), "issuer"),
        "wrong aud": (token(aud="someone-else"), "audience"),
        "missing exp": (token(exp=None), "exp"),
        "unknown kid": (token(kid="nobody"), "No known key"),
        "tampered signature": (f"{head}.{payload}.{tampered_sig}", "signature"),
        "tampered payload": (f"{head}.{tampered_payload}.{signature}", "signature"),
        "truncated": (good[:-12], ""),
        "two segments": (f"{head}.{payload}", "malformed"),
        "garbage": ("not-a-jwt", "malformed"),
        "bad base64 header": (f"!!!.{payload}.{signature}", "malformed"),
        "wrong secret": (token("x" * 64), "signature"),
    }
    async with gw.client() as client:
        for name, (t, part) in cases.items():
            r = await client.get("/api/orders", headers=bearer(t))
            assert r.status_code == 401, name
            assert_invalid(r, part)
            assert t not in r.text and t not in str(r.headers), name
        assert (await client.get("/api/orders", headers=bearer(good))).status_code == 200
        # Within the leeway (60 s by default) an expired token still passes.
        assert (await client.get("/api/orders", headers=bearer(token(exp=now - 30)))).status_code == 200
    assert len(upstream.requests) == 2


async def test_missing_token_or_wrong_scheme_gets_a_plain_challenge(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC))
    async with gw.client() as client:
        for headers in (
            {},
            {"authorization": "Basic YWxpY2U6c2VjcmV0"},
            {"authorization": f"Token {token()}"},
            {"authorization": "Bearer"},
            {"authorization": token()},
        ):
            r = await client.get("/api/orders", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == 'Bearer realm="bascule"'  # RFC 6750 §3.1: no error code
            assert r.headers["content-type"] == "application/problem+json"
        # The scheme is case-insensitive (RFC 9110 §11.1).
        r = await client.get("/api/orders", headers={"authorization": f"bearer {token()}"})
        assert r.status_code == 200
    assert len(upstream.requests) == 1


async def test_token_size_limit(nursery):
    upstream = await start_upstream(nursery)
    at_limit = token()
    gw = await serve(nursery, route(upstream, BASIC + f"max_token_size = {len(at_limit)}"))
    over = token(pad="x" * 3)
    assert len(over) > len(at_limit)
    async with gw.client() as client:
        assert (await client.get("/api/orders", headers=bearer(at_limit))).status_code == 200
        r = await client.get("/api/orders", headers=bearer(over))
        assert_invalid(r, f"longer than {len(at_limit)} bytes")
    assert len(upstream.requests) == 1


# --- scopes, consumers, identity headers --------------------------------------------------------------------


async def test_scope_required_per_route(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'scopes = ["orders:write"]'))
    async with gw.client() as client:
        r = await client.post("/api/orders", headers=bearer(token(scope="orders:read")))
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="orders:write"' in challenge
        assert r.headers["content-type"] == "application/problem+json"
        for scopes in ("orders:read orders:write", ["orders:write"]):
            r = await client.post("/api/orders", headers=bearer(token(scope=scopes)))
            assert r.status_code == 200
    assert len(upstream.requests) == 2


async def test_identity_headers_replace_client_sent_copies(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        f"""
        [consumers.alice]
        id = "c-1001"
        groups = ["staff", "beta"]
        [consumers.alice.credentials.jwt]
        subjects = ["alice"]
        issuer = "{ISS}"
    """
        + route(upstream, BASIC + 'claim_headers = { email = "X-User-Email", tier = "X-Consumer-Tier" }')
        + """
        [[routes]]
        name = "open"
        paths = ["/open"]
        service = "orders"
    """,
    )
    spoof = {
        "x-consumer-id": "admin",
        "x-consumer-username": "root",
        "x-consumer-groups": "admins",
        "x-user-email": "ceo@corp.test",
        "x-consumer-anything": "1",
    }
    async with gw.client() as client:
        r = await client.get("/api/orders", headers=spoof | bearer(token(email="alice@corp.test")))
        assert r.status_code == 200
        seen = upstream.requests[-1]
        assert seen.headers.get_all("x-consumer-id") == ["c-1001"]
        assert seen.headers.get_all("x-consumer-username") == ["alice"]
        assert seen.headers.get_all("x-consumer-groups") == ["beta,staff"]
        assert seen.headers.get_all("x-user-email") == ["alice@corp.test"]
        assert "x-consumer-tier" not in seen.headers and "x-consumer-anything" not in seen.headers
        # An undeclared subject becomes a consumer built from its claims.
        r = await client.get("/api/orders", headers=spoof | bearer(token(sub="bob", groups=["ops"])))
        assert r.status_code == 200
        seen = upstream.requests[-1]
        assert (seen.header("x-consumer-id"), seen.header("x-consumer-username")) == ("bob", "bob")
        assert seen.header("x-consumer-groups") == "ops"
        assert "x-user-email" not in seen.headers
        # A route without the plugin stays open, and forged identity never reaches its upstream either.
        r = await client.get("/open/x", headers=spoof)
        assert r.status_code == 200
        assert not any(name.startswith("x-consumer-") for name, _ in upstream.requests[-1].headers)


async def test_unsafe_claim_values_cannot_split_headers(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'claim_headers = { name = "X-Consumer-Name" }'))
    async with gw.client() as client:
        r = await client.get("/api/orders", headers=bearer(token(sub="é\r\nx-admin: 1", name="Zoë\n%")))
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.header("x-consumer-id") == "%C3%A9%0D%0Ax-admin: 1"
    assert seen.header("x-consumer-name") == "Zo%C3%AB%0A%25"
    assert "x-admin" not in seen.headers


async def test_require_consumer_and_anonymous(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        """
        [consumers.guest]
        groups = ["public"]
        [consumers.alice.credentials.jwt]
        subjects = ["alice"]
    """
        + route(upstream, BASIC + 'anonymous = "guest"\nrequire_consumer = true'),
    )
    async with gw.client() as client:
        r = await client.get("/api/orders")
        assert r.status_code == 200
        assert upstream.requests[-1].header("x-consumer-username") == "guest"
        assert upstream.requests[-1].header("x-consumer-groups") == "public"
        assert (await client.get("/api/orders", headers=bearer(token()))).status_code == 200
        assert upstream.requests[-1].header("x-consumer-username") == "alice"
        # A bad token is never downgraded to anonymous; an unknown subject is refused.
        assert_invalid(await client.get("/api/orders", headers=bearer(token(exp=1))))
        r = await client.get("/api/orders", headers=bearer(token(sub="mallory")))
        assert r.status_code == 403
    assert len(upstream.requests) == 2


async def test_token_from_cookie_or_query_with_secret_from_env(nursery, monkeypatch):
    monkeypatch.setenv("BASCULE_TEST_JWT_SECRET", SECRET)
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            """
        keys = [{ secret = "env:BASCULE_TEST_JWT_SECRET" }]
        header = ""
        cookie = "session"
        query = "jwt"
    """,
        ),
    )
    async with gw.client() as client:
        r = await client.get("/api/orders", headers={"cookie": f"theme=dark; session={token()}"})
        assert r.status_code == 200
        r = await client.get("/api/orders", params={"jwt": token(sub="q")})
        assert r.status_code == 200 and upstream.requests[-1].header("x-consumer-id") == "q"
        assert (await client.get("/api/orders", headers=bearer(token()))).status_code == 401
    assert len(upstream.requests) == 2


async def test_max_lifetime(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'max_lifetime = "1h"\nleeway = "0s"'))
    now = int(time.time())
    async with gw.client() as client:
        assert (await client.get("/api/orders", headers=bearer(token(iat=now, exp=now + 3600)))).status_code == 200
        assert_invalid(await client.get("/api/orders", headers=bearer(token(iat=now, exp=now + 3601))), "lifetime")


async def test_cached_token_never_outlives_exp(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'leeway = "0s"'))
    exp = int(time.time()) + 2
    t = token(exp=exp)
    plugin = next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, JWTPlugin))
    async with gw.client() as client:
        assert (await client.get("/api/orders", headers=bearer(t))).status_code == 200
        first = await plugin.verifier.verify(t)
        assert await plugin.verifier.verify(t) is first  # served from the cache
        await trio.sleep(max(0.0, exp - time.time()) + 0.05)
        assert_invalid(await client.get("/api/orders", headers=bearer(t)), "expired")
    assert len(upstream.requests) == 1


async def test_a_cached_token_is_verified_again_after_cache_ttl(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'cache_ttl = "100ms"'))
    plugin = next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, JWTPlugin))
    t = token()
    first = await plugin.verifier.verify(t)
    assert await plugin.verifier.verify(t) is first  # within cache_ttl: the cached result
    await trio.sleep(0.15)
    again = await plugin.verifier.verify(t)
    assert again is not first and again == first  # verified again, to the same result
    assert await plugin.verifier.verify(t) is again  # and cached anew


async def test_invalid_settings_are_config_errors(nursery):
    upstream = await start_upstream(nursery)
    bad = {
        'keys = [{ secret = "short" }]': "at least 32 bytes",
        f'keys = [{{ secret = "{SECRET}", algorithms = ["RS256"] }}]': (
            "algorithm RS256 does not fit this key (type oct)"
        ),
        f'keys = [{{ secret = "{SECRET}", algorithms = ["none"] }}]': "unsupported algorithm 'none'",
        f'keys = [{{ secret = "{SECRET}", pem = "x" }}]': "exactly one of",
        'keys = [{ pem = "not a pem" }]': "cannot load the PEM key",
        'keys = [{ jwk = "{" }]': "jwk:",
        'jwks = [{ url = "ftp://idp" }]': "jwks[0].url: expected an http(s) URL, got 'ftp://idp'",
        'jwks = [{ url = "http://idp", algorithms = ["HS256"] }]': (
            "jwks[0].algorithms[0]: expected an asymmetric algorithm (JWKS keys are public keys: RS256"
        ),
        "": "at least one key",
    }
    for table, message in bad.items():
        with pytest.raises(ConfigError) as e:
            await serve(nursery, route(upstream, table))
        assert message in str(e.value), (table, str(e.value))
        assert "route" in str(e.value) and "jwt" in str(e.value)


async def test_anonymous_must_be_declared(nursery):
    upstream = await start_upstream(nursery)
    with pytest.raises(Exception) as e:  # hypercorn wraps it in exception groups
        async with trio.open_nursery() as inner:
            await serve(inner, route(upstream, BASIC + 'anonymous = "ghost"'))
    assert "anonymous consumer 'ghost' is not declared" in "".join(traceback.format_exception(e.value))


# --- JWKS ------------------------------------------------------------------------------------------------------


def jwk(private, kid: str, alg: str | None = "RS256") -> dict:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    data |= {"kid": kid, "use": "sig"} | ({"alg": alg} if alg else {})
    return data


class IdP:
    """A JWKS endpoint whose key set and availability a test controls."""

    def __init__(self, *keys: dict) -> None:
        self.keys = list(keys)
        self.down = False
        self.calls = 0
        self._called = trio.Event()

    async def wait_for_calls(self, n: int) -> None:
        while self.calls < n:
            await self._called.wait()

    async def __call__(self, request) -> Response:
        self.calls += 1
        self._called.set()
        self._called = trio.Event()
        if self.down:
            return Response.json({"error": "maintenance"}, 503)
        return Response.json({"keys": self.keys})


async def start_idp(nursery, *keys):
    idp = IdP(*keys)
    server = await start_upstream(nursery, idp)
    return idp, server


async def test_jwks_key_rotation_is_picked_up_without_restart(nursery):
    idp, server = await start_idp(nursery, jwk(RSA, "k1"))
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        jwks = [{{ url = "{server.url}/jwks" }}]
        jwks_refetch_interval = "0s"
    """,
        ),
    )
    async with gw.client() as client:
        assert (await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "k1")))).status_code == 200
        assert len(server.requests) == 1
        idp.keys = [jwk(RSA2, "k2")]  # the IdP rotates
        assert (await client.get("/api/orders", headers=bearer(token(RSA2, "RS256", "k2")))).status_code == 200
        assert len(server.requests) == 2
        # A key without "alg" is bound to the allowed algorithms fitting its type; HS256 is never one.
        idp.keys = [jwk(RSA, "k3", alg=None)]
        assert (await client.get("/api/orders", headers=bearer(token(RSA, "PS256", "k3")))).status_code == 200
    assert server.requests[0].path == "/jwks" and len(upstream.requests) == 3


async def test_jwks_background_refresh_and_idp_down(nursery):
    idp, server = await start_idp(nursery, jwk(RSA, "k1"))
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        jwks = [{{ url = "{server.url}/jwks" }}]
        jwks_cache_ttl = "50ms"
        jwks_refetch_interval = "50ms"
    """,
        ),
    )
    with trio.fail_after(5):
        await idp.wait_for_calls(3)  # background refreshes happen without any request
    idp.down = True
    with trio.fail_after(5):
        await idp.wait_for_calls(idp.calls + 2)  # refreshes keep failing
    async with gw.client() as client:
        r = await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "k1", sub="during-outage")))
        assert r.status_code == 200  # the last good key set still verifies
        server.stop.set()  # now the IdP is gone entirely
        await trio.sleep(0.2)
        r = await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "k1", sub="after-stop")))
        assert r.status_code == 200
        assert_invalid(await client.get("/api/orders", headers=bearer(token(RSA2, "RS256", "k2"))))
    assert [r.header("x-consumer-id") for r in upstream.requests] == ["during-outage", "after-stop"]


async def test_unknown_kid_storm_refetches_once(nursery):
    _, server = await start_idp(nursery, jwk(RSA, "k1"))
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        jwks = [{{ url = "{server.url}/jwks" }}]
        jwks_refetch_interval = "2s"
    """,
        ),
    )
    tokens = [token(RSA2, "RS256", f"ghost-{i % 3}", n=i) for i in range(30)]
    statuses = []
    async with gw.client() as client:

        async def attempt(i: int) -> None:
            r = await client.get("/api/orders", headers=bearer(tokens[i]))
            statuses.append(r.status_code)

        async def storm() -> None:
            async with trio.open_nursery() as requests:
                for i in range(30):
                    requests.start_soon(attempt, i)

        await storm()  # right after the initial fetch: no refetch at all
        assert len(server.requests) == 1
        await trio.sleep(2.1)
        await storm()  # the interval has passed: one refetch for the whole storm
        assert len(server.requests) == 2
    assert statuses == [401] * 60
    assert upstream.requests == []


async def test_issuer_selects_its_own_jwks(nursery):
    _, server_a = await start_idp(nursery, jwk(RSA, "same-kid"))
    _, server_b = await start_idp(nursery, jwk(RSA2, "same-kid"))
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        route(
            upstream,
            f"""
        issuers = ["https://a.test", "https://b.test"]
        jwks = [{{ url = "{server_a.url}", issuer = "https://a.test" }},
                {{ url = "{server_b.url}", issuer = "https://b.test" }}]
    """,
        ),
    )
    async with gw.client() as client:
        for key, iss in ((RSA, "https://a.test"), (RSA2, "https://b.test")):
            r = await client.get("/api/orders", headers=bearer(token(key, "RS256", "same-kid", iss=iss)))
            assert r.status_code == 200
        # Signed by A's key but claiming to come from B: B's keys do not verify it.
        r = await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "same-kid", iss="https://b.test")))
        assert_invalid(r, "signature")
        r = await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "same-kid", iss="https://c.test")))
        assert_invalid(r)
    assert len(upstream.requests) == 2


async def test_jwks_size_limit(nursery):
    idp, server = await start_idp(nursery, jwk(RSA, "k1"))
    size = len(json.dumps({"keys": idp.keys}, separators=(",", ":")))
    upstream = await start_upstream(nursery)
    t = token(RSA, "RS256", "k1")
    for limit, status in ((size, 200), (size - 1, 401)):
        gw = await serve(
            nursery,
            route(
                upstream,
                f"""
            jwks = [{{ url = "{server.url}" }}]
            jwks_max_size = {limit}
        """,
            ),
        )
        async with gw.client() as client:
            assert (await client.get("/api/orders", headers=bearer(t))).status_code == status
        gw.stop.set()
    assert len(upstream.requests) == 1


async def test_jwks_timeout_at_startup_then_recovery(nursery):
    idp, server = await start_idp(nursery, jwk(RSA, "k1"))
    release = trio.Event()
    answer = server.handler

    async def hanging(request):
        await release.wait()
        return await answer(request)

    server.handler = hanging
    upstream = await start_upstream(nursery)
    with trio.fail_after(5):  # the startup fetch gives up after jwks_timeout instead of hanging
        gw = await serve(
            nursery,
            route(
                upstream,
                f"""
            jwks = [{{ url = "{server.url}" }}]
            jwks_timeout = "100ms"
            jwks_refetch_interval = "0s"
        """,
            ),
        )
    async with gw.client() as client:
        assert_invalid(await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "k1"))), "No known key")
        release.set()
        assert (await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "k1")))).status_code == 200
    assert idp.calls >= 1 and len(upstream.requests) == 1


async def test_static_jwk_is_bound_to_its_alg(nursery):
    data = jwk(RSA, "j1", alg="RS256")
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, f"keys = [{{ jwk = '{json.dumps(data)}' }}]"))
    async with gw.client() as client:
        assert (await client.get("/api/orders", headers=bearer(token(RSA, "RS256", "j1")))).status_code == 200
        assert_invalid(await client.get("/api/orders", headers=bearer(token(RSA, "PS256", "j1"))))
    assert len(upstream.requests) == 1


async def test_cache_size_bounds_the_verified_tokens_kept(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + "cache_size = 2"))
    plugin = next(p for p in gw.gateway.runtime.plugins.instances.values() if isinstance(p, JWTPlugin))
    tokens = [token(sub=f"user-{i}") for i in range(3)]
    first = [await plugin.verifier.verify(t) for t in tokens[:2]]
    assert [await plugin.verifier.verify(t) for t in tokens[:2]] == first  # both kept at the limit
    assert all(a is b for a, b in zip(first, [await plugin.verifier.verify(t) for t in tokens[:2]], strict=True))
    await plugin.verifier.verify(tokens[2])  # one more: the least recently stored goes
    again = [await plugin.verifier.verify(t) for t in tokens[:2]]
    assert sum(a is b for a, b in zip(first, again, strict=True)) < 2


# --- mint ------------------------------------------------------------------------------------------------------


def test_mint_command_prints_a_token_the_plugin_accepts(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_JWT_SECRET", SECRET)
    code = mint_main(
        [
            "--secret",
            "env:DEMO_JWT_SECRET",
            "--sub",
            "alice",
            "--scope",
            "orders:read",
            "--ttl",
            "15m",
            "--iss",
            ISS,
            "--claim",
            "email=a@corp.test",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip()
    claims = jwt.decode(printed, SECRET, algorithms=["HS256"], issuer=ISS)
    assert claims["sub"] == "alice" and claims["scope"] == "orders:read" and claims["email"] == "a@corp.test"
    assert claims["exp"] - claims["iat"] == 900
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(_pem_private(RSA))
    assert mint_main(["--key-file", str(key_file), "--sub", "bob", "--kid", "k1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(printed)["kid"] == "k1"
    assert jwt.decode(printed, RSA.public_key(), algorithms=["RS256"])["sub"] == "bob"
    assert mint_main(["--secret", "env:NOT_SET_ANYWHERE", "--sub", "x"]) == 2
    assert "NOT_SET_ANYWHERE is not set" in capsys.readouterr().err
    assert jwt.decode(mint(SECRET, sub="c", ttl=60), SECRET, algorithms=["HS256"])["sub"] == "c"


def test_installed_under_its_entry_point():
    from bascule.registry import discover

    assert discover()["jwt"].cls is JWTPlugin


def test_readme_documents_every_setting():
    from dataclasses import fields
    from pathlib import Path

    from bascule_jwt.settings import Credentials, JwksConfig, KeyConfig, Settings

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for model in (Settings, KeyConfig, JwksConfig, Credentials):
        for f in fields(model):
            if f.init:
                assert f"| `{f.name}` |" in readme, (model.__name__, f.name)


# --- more than one credential (RFC 6750 §2, §3.1; RFC 9110 §11.6.2) ----------------------------------------


def assert_invalid_request(r) -> None:
    """A 400 invalid_request answer (RFC 6750 §3.1: more than one method, a repeated parameter)."""
    assert r.status_code == 400, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="bascule", error="invalid_request"'), challenge
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "The request carries more than one credential."


async def test_two_authorization_fields_are_refused_and_nothing_reaches_the_upstream(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC))
    good, other = token(), token(sub="mallory", key="m" * 64)
    async with gw.client() as client:
        for fields in (
            [("authorization", f"Bearer {good}"), ("authorization", f"Bearer {other}")],
            [("authorization", f"Bearer {other}"), ("authorization", f"Bearer {good}")],
            [("authorization", f"Bearer {good}"), ("authorization", "Basic YWxpY2U6c2VjcmV0")],
            [("authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}")],
            [("authorization", f"Bearer {good}, Bearer {other}")],  # two fields joined (RFC 9110 §5.3)
            [("authorization", f"Bearer {good},Bearer {good}")],
        ):
            assert_invalid_request(await client.get("/api/orders", headers=fields))
        # One field: the upstream receives exactly that one, and the identity it proved.
        r = await client.get("/api/orders", headers=[("authorization", f"Bearer {good}")])
        assert r.status_code == 200
    assert len(upstream.requests) == 1
    assert upstream.requests[0].headers.get_all("authorization") == [f"Bearer {good}"]
    assert upstream.requests[0].header("x-consumer-id") == "alice"


async def test_token_in_two_cookies_or_two_places_is_refused(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC + 'cookie = "session"\nquery = "jwt"'))
    good, other = token(), token(sub="mallory")
    async with gw.client() as client:
        for headers, query in (
            ({"cookie": f"session={good}; theme=dark; session={other}"}, ""),
            ([("cookie", f"session={good}"), ("cookie", f"session={other}")], ""),  # HTTP/2-style split fields
            ({}, f"jwt={good}&jwt={other}"),
            ({"cookie": f"session={good}"}, f"jwt={good}"),
            ({"authorization": f"Bearer {good}", "cookie": f"session={other}"}, ""),
            ({"authorization": f"Bearer {good}"}, f"jwt={other}"),
        ):
            assert_invalid_request(await client.get(f"/api/orders?{query}", headers=headers))
        # One place, once: accepted and forwarded as sent.
        r = await client.get("/api/orders", headers={"cookie": f"theme=dark; session={good}"})
        assert r.status_code == 200
        r = await client.get(f"/api/orders?a=1&jwt={good}")
        assert r.status_code == 200
    assert len(upstream.requests) == 2
    assert upstream.requests[0].headers.get_all("cookie") == [f"theme=dark; session={good}"]
    assert "authorization" not in upstream.requests[0].headers
    assert upstream.requests[1].query == f"a=1&jwt={good}"


# --- NumericDate (RFC 7519 §2): exp, nbf and iat are JSON numbers ----------------------------------------


def _raw_hs256(payload_json: str) -> str:
    """An HS256 token over an exact payload text (JSON a PyJWT encoder would not write)."""
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload_json.encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_time_claims_must_be_json_numbers(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, route(upstream, BASIC))
    now = int(time.time())
    base = f'"sub": "alice", "iss": "{ISS}", "aud": "{AUD}"'
    rejected = {
        "exp as a string": token(exp=str(now + 600)),
        "exp as a past string": token(exp=str(now - 600)),
        "nbf as a string": token(nbf=str(now - 60)),
        "iat as a string": token(iat=str(now)),
        "exp true": token(exp=True),
        "iat false": token(iat=False),
        "exp null": _raw_hs256(f'{{{base}, "exp": null}}'),
        "exp an array": token(exp=[now + 600]),
        "exp NaN": _raw_hs256(f'{{{base}, "exp": NaN}}'),
        "exp Infinity": _raw_hs256(f'{{{base}, "exp": Infinity}}'),
        "exp beyond a double": _raw_hs256(f'{{{base}, "exp": 1e400}}'),
        "exp a huge integer": _raw_hs256(f'{{{base}, "exp": 1{"0" * 400}}}'),
        "nbf -Infinity": _raw_hs256(f'{{{base}, "exp": {now + 600}, "nbf": -Infinity}}'),
    }
    async with gw.client() as client:
        for what, t in rejected.items():
            r = await client.get("/api/orders", headers=bearer(t))
            assert r.status_code == 401, (what, r.status_code, r.text)
            assert_invalid(r, "NumericDate")
        # Numbers are accepted, fractional ones included (a NumericDate may be non-integer).
        for t in (token(exp=now + 600.5, iat=now - 0.25, nbf=now - 1.5), _raw_hs256(f'{{{base}, "exp": {now + 600}}}')):
            assert (await client.get("/api/orders", headers=bearer(t))).status_code == 200
    assert len(upstream.requests) == 2
