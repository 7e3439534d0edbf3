"""bascule-key-auth over real sockets: a real gateway in front of a real upstream."""

from __future__ import annotations

import hashlib
import traceback

import pytest
import trio
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from bascule_key_auth import KeyAuthPlugin
from bascule_key_auth.hash import hashed
from bascule_key_auth.hash import main as hash_main

ALICE_KEY = "alice-key-0123456789"
ALICE_OLD_KEY = "alice-old-key"
BOB_KEY = "bob-key-9876543210"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


CONSUMERS = f"""
    [consumers.alice]
    id = "c-1"
    groups = ["partners", "beta"]
    [consumers.alice.credentials.key-auth]
    keys = ["{sha(ALICE_KEY)}", "{sha(ALICE_OLD_KEY).upper().replace("SHA256", "sha256")}"]
    [consumers.bob.credentials.key-auth]
    keys = ["{sha(BOB_KEY)}"]
    [consumers.guest]
    groups = ["public"]
"""


def config(upstream, table: str = "", consumers: str = CONSUMERS) -> str:
    return (
        consumers
        + f"""
        [services.partner]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "partner"
        paths = ["/partner"]
        service = "partner"
        [routes.plugins.key-auth]
        {table}
        [[routes]]
        name = "open"
        paths = ["/open"]
        service = "partner"
    """
    )


async def serve(nursery, text: str):
    return await start_gateway(nursery, text, plugins=[KeyAuthPlugin], entry_points=False)


def assert_unauthorized(r, detail: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'APIKey realm="bascule"'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == detail


async def test_keys_in_default_headers_identify_consumers(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream))
    async with gw.client() as client:
        for headers, who in (
            ({"apikey": ALICE_KEY}, "c-1"),
            ({"X-API-Key": BOB_KEY}, "bob"),
            ({"x-api-key": ALICE_OLD_KEY}, "c-1"),
        ):
            r = await client.get("/partner/orders", headers=headers)
            assert r.status_code == 200, r.text
            assert upstream.requests[-1].header("x-consumer-id") == who
        seen = upstream.requests[0]
        assert seen.header("x-consumer-username") == "alice"
        assert seen.header("x-consumer-groups") == "beta,partners"
        assert seen.header("apikey") == ALICE_KEY  # forwarded unless hide_credentials
        assert "x-consumer-groups" not in upstream.requests[1].headers  # bob has no groups
        # The stored digest itself is not a key.
        r = await client.get("/partner", headers={"apikey": sha(ALICE_KEY)})
        assert_unauthorized(r, "The API key is not valid.")
    assert len(upstream.requests) == 3


async def test_missing_wrong_and_oversized_keys_are_401(nursery):
    upstream = await start_upstream(nursery)
    at_limit = "k" * 64
    gw = await serve(
        nursery,
        config(
            upstream,
            "max_key_size = 64",
            CONSUMERS
            + f"""
        [consumers.long.credentials.key-auth]
        keys = ["{sha(at_limit)}"]
    """,
        ),
    )
    async with gw.client() as client:
        assert_unauthorized(await client.get("/partner"), "An API key is required.")
        r = await client.get("/partner", headers={"apikey": "wrong-key"})
        assert_unauthorized(r, "The API key is not valid.")
        assert "wrong-key" not in r.text
        # A key in a query parameter is ignored unless configured.
        assert_unauthorized(await client.get("/partner", params={"apikey": ALICE_KEY}), "An API key is required.")
        # The size limit: a key of exactly max_key_size works, one byte more is refused before hashing.
        assert (await client.get("/partner", headers={"apikey": at_limit})).status_code == 200
        r = await client.get("/partner", headers={"apikey": at_limit + "k"})
        assert_unauthorized(r, "The API key is longer than 64 bytes.")
    assert len(upstream.requests) == 1


async def test_hide_credentials_strips_header_and_query_key(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            'query = ["apikey"]\nhide_credentials = true',
            CONSUMERS
            + f"""
        [consumers.utf8.credentials.key-auth]
        keys = ["{sha("kéy")}"]
    """,
        ),
    )
    async with gw.client() as client:
        r = await client.get("/partner/x", headers={"x-api-key": ALICE_KEY, "x-other": "kept"})
        assert r.status_code == 200
        seen = upstream.requests[-1]
        assert "x-api-key" not in seen.headers and seen.header("x-other") == "kept"
        r = await client.get(f"/partner/x?a=1&apikey={ALICE_KEY}&b=%20two")
        assert r.status_code == 200
        assert upstream.requests[-1].query == "a=1&b=%20two"
        assert upstream.requests[-1].header("x-consumer-id") == "c-1"
        # Percent-encoded keys are decoded to the bytes that were hashed.
        r = await client.get("/partner/x?apikey=k%C3%A9y")
        assert r.status_code == 200 and upstream.requests[-1].header("x-consumer-id") == "utf8"
        assert upstream.requests[-1].query == ""


async def test_client_sent_identity_headers_never_reach_the_upstream(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream))
    spoof = {
        "x-consumer-id": "admin",
        "x-consumer-username": "root",
        "x-consumer-groups": "admins",
        "x-consumer-custom": "1",
    }
    async with gw.client() as client:
        assert (await client.get("/partner", headers=spoof | {"apikey": BOB_KEY})).status_code == 200
        seen = upstream.requests[-1]
        assert seen.headers.get_all("x-consumer-id") == ["bob"]
        assert seen.headers.get_all("x-consumer-username") == ["bob"]
        assert "x-consumer-groups" not in seen.headers and "x-consumer-custom" not in seen.headers
        # A route without the plugin stays open, and still gets no forged identity.
        assert (await client.get("/open", headers=spoof)).status_code == 200
        assert not any(name.startswith("x-consumer-") for name, _ in upstream.requests[-1].headers)


async def test_anonymous_consumer(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, 'anonymous = "guest"'))
    async with gw.client() as client:
        assert (await client.get("/partner")).status_code == 200
        assert upstream.requests[-1].header("x-consumer-username") == "guest"
        assert upstream.requests[-1].header("x-consumer-groups") == "public"
        # A wrong key is not downgraded to anonymous.
        assert_unauthorized(await client.get("/partner", headers={"apikey": "nope"}), "The API key is not valid.")
    assert len(upstream.requests) == 1


async def test_invalid_credentials_are_config_errors(nursery):
    upstream = await start_upstream(nursery)
    for keys, message in (
        ('["plaintext-key"]', 'expected "sha256:<64 hex digits>"'),
        ('["sha256:abc"]', "keys[0]"),
        ("[]", "credentials.key-auth.keys: must not be empty"),
    ):
        with pytest.raises(ConfigError) as e:
            await serve(
                nursery,
                config(
                    upstream,
                    "",
                    f"""
                [consumers.eve.credentials.key-auth]
                keys = {keys}
            """,
                ),
            )
        assert "consumers.eve" in str(e.value) and message in str(e.value)
    with pytest.raises(ConfigError, match="at least one header or query"):
        await serve(nursery, config(upstream, "headers = []"))


async def startup_failure(config: str) -> str:
    """The message a gateway fails to start with."""
    with pytest.raises(Exception) as e:  # hypercorn wraps it in exception groups
        async with trio.open_nursery() as nursery:
            await serve(nursery, config)
    return "".join(traceback.format_exception(e.value))


async def test_shared_key_and_unknown_anonymous_stop_startup(nursery):
    upstream = await start_upstream(nursery)
    shared = (
        CONSUMERS
        + f"""
        [consumers.mallory.credentials.key-auth]
        keys = ["{sha(BOB_KEY)}"]
    """
    )
    assert "consumers 'bob' and 'mallory' share an API key" in await startup_failure(config(upstream, "", shared))
    assert "anonymous consumer 'nobody' is not declared" in await startup_failure(
        config(upstream, 'anonymous = "nobody"')
    )


async def test_reload_picks_up_new_consumers(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, "", ""))
    await gw.reload(config(upstream))
    async with gw.client() as client:
        assert (await client.get("/partner", headers={"apikey": BOB_KEY})).status_code == 200


def test_hash_command(capsys, monkeypatch):
    assert hash_main([ALICE_KEY]) == 0
    assert capsys.readouterr().out.strip() == sha(ALICE_KEY) == hashed(ALICE_KEY)
    assert hash_main(["--new"]) == 0
    key_line, config_line = capsys.readouterr().out.strip().splitlines()
    assert config_line.split()[1] == sha(key_line.split()[1])


def test_installed_under_its_entry_point():
    from bascule.registry import discover

    assert discover()["key-auth"].cls is KeyAuthPlugin


def test_readme_documents_every_setting():
    from dataclasses import fields
    from pathlib import Path

    from bascule_key_auth.settings import Credentials, Settings

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for model in (Settings, Credentials):
        for f in fields(model):
            assert f"| `{f.name}` |" in readme, (model.__name__, f.name)


# --- more than one credential (RFC 6750 §2, §3.1; RFC 9110 §11.6.2) ----------------------------------------


def assert_invalid_request(r, scheme: str = "APIKey") -> None:
    assert r.status_code == 400, r.text
    assert r.headers["www-authenticate"].startswith(f'{scheme} realm="bascule", error="invalid_request"')
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "The request carries more than one credential."
    assert ALICE_KEY not in r.text and BOB_KEY not in r.text


async def test_a_key_sent_twice_or_in_two_places_is_refused(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, 'query = ["apikey", "key"]'))
    async with gw.client() as client:
        for headers, query in (
            ([("apikey", ALICE_KEY), ("apikey", BOB_KEY)], ""),
            ([("apikey", ALICE_KEY), ("apikey", ALICE_KEY)], ""),
            ([("apikey", BOB_KEY), ("x-api-key", ALICE_KEY)], ""),
            ([("x-api-key", ALICE_KEY), ("X-API-Key", "nope")], ""),
            ([("apikey", f"{ALICE_KEY}, {BOB_KEY}")], ""),  # two fields joined (RFC 9110 §5.3)
            ([("apikey", ALICE_KEY)], f"apikey={BOB_KEY}"),
            ([], f"apikey={ALICE_KEY}&apikey={BOB_KEY}"),
            ([], f"apikey={ALICE_KEY}&key={ALICE_KEY}"),
            ([], f"apikey={ALICE_KEY}&api%6Bey=x"),  # the name as decoded counts
        ):
            assert_invalid_request(await client.get(f"/partner?{query}", headers=headers))
        # One key, once: the upstream receives exactly that one.
        assert (await client.get("/partner", headers={"x-api-key": BOB_KEY})).status_code == 200
        assert (await client.get(f"/partner?a=1&key={ALICE_KEY}")).status_code == 200
    assert len(upstream.requests) == 2
    seen = upstream.requests[0]
    assert seen.headers.get_all("x-api-key") == [BOB_KEY] and "apikey" not in seen.headers
    assert seen.header("x-consumer-id") == "bob"
    assert upstream.requests[1].query == f"a=1&key={ALICE_KEY}"


async def test_hidden_key_sent_twice_is_refused_and_a_single_one_never_forwarded(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, 'query = ["apikey"]\nhide_credentials = true'))
    async with gw.client() as client:
        assert_invalid_request(await client.get("/partner", headers=[("apikey", ALICE_KEY), ("apikey", "x")]))
        assert_invalid_request(await client.get(f"/partner?apikey={ALICE_KEY}", headers={"apikey": ALICE_KEY}))
        assert (await client.get(f"/partner?apikey={ALICE_KEY}")).status_code == 200
    assert len(upstream.requests) == 1
    assert upstream.requests[0].query == "" and "apikey" not in upstream.requests[0].headers


async def test_either_key_or_token_but_not_both(nursery):
    """With ``anonymous`` on both, a request carrying a key *and* a token is refused:
    otherwise the token would reach the upstream unverified, next to the key's identity."""
    import jwt as pyjwt
    from bascule_jwt import JWTPlugin

    secret = "s" * 64
    bearer = "Bearer " + pyjwt.encode({"sub": "dave", "exp": 4102444800}, secret, algorithm="HS256")
    upstream = await start_upstream(nursery)
    text = config(
        upstream, f'anonymous = "guest"\n[routes.plugins.jwt]\nkeys = [{{ secret = "{secret}" }}]\nanonymous = "guest"'
    )
    gw = await start_gateway(nursery, text, plugins=[KeyAuthPlugin, JWTPlugin], entry_points=False)
    async with gw.client() as client:
        r = await client.get("/partner", headers={"apikey": BOB_KEY, "authorization": bearer})
        assert r.status_code == 400, r.text
        assert r.headers["www-authenticate"].startswith('Bearer realm="bascule", error="invalid_request"')
        assert (await client.get("/partner", headers={"apikey": BOB_KEY})).status_code == 200
        assert (await client.get("/partner", headers={"authorization": bearer})).status_code == 200
    assert [r.header("x-consumer-id") for r in upstream.requests] == ["bob", "dave"]
    assert "authorization" not in upstream.requests[0].headers


# --- scheme = "Bearer": a static bearer token (RFC 9110 §11.1, §11.4; RFC 6750) -----------------------------


async def test_scheme_bearer_reads_authorization_with_rfc_9110_matching(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, 'scheme = "Bearer"'))
    async with gw.client() as client:
        for value in (f"Bearer {ALICE_KEY}", f"bearer   {ALICE_KEY}", f"BEARER {ALICE_KEY}"):
            r = await client.get("/partner", headers={"authorization": value})
            assert r.status_code == 200, (value, r.text)
            assert upstream.requests[-1].headers.get_all("authorization") == [value]
            assert upstream.requests[-1].header("x-consumer-id") == "c-1"
        # Another scheme, or no key after the scheme, is no key at all: a plain Bearer challenge (RFC 6750 §3.1).
        for value in (f"Basic {ALICE_KEY}", ALICE_KEY, "Bearer", f"Bearerx {ALICE_KEY}", f"APIKey {ALICE_KEY}"):
            r = await client.get("/partner", headers={"authorization": value})
            assert r.status_code == 401, (value, r.text)
            assert r.headers["www-authenticate"] == 'Bearer realm="bascule"'
            assert r.json()["detail"] == "An API key is required."
        # A wrong key, or credentials that are not a token68, are invalid_token.
        for value in ("Bearer nope", f"Bearer {ALICE_KEY} x", f"Bearer {ALICE_KEY}%"):
            r = await client.get("/partner", headers={"authorization": value})
            assert r.status_code == 401, (value, r.text)
            assert r.headers["www-authenticate"] == (
                'Bearer realm="bascule", error="invalid_token", error_description="The API key is not valid."'
            )
        assert_invalid_request(
            await client.get(
                "/partner", headers=[("authorization", f"Bearer {ALICE_KEY}"), ("authorization", f"Bearer {BOB_KEY}")]
            ),
            "Bearer",
        )
        assert_invalid_request(
            await client.get("/partner", headers={"authorization": f"Bearer {ALICE_KEY}, Bearer {BOB_KEY}"}), "Bearer"
        )
        assert_invalid_request(
            await client.get("/partner", headers={"authorization": f"Bearer {ALICE_KEY}", "apikey": ALICE_KEY}),
            "Bearer",
        )
        # The other headers still carry bare keys; the challenge names the scheme.
        assert (await client.get("/partner", headers={"apikey": BOB_KEY})).status_code == 200
        r = await client.get("/partner")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="bascule"'
    assert len(upstream.requests) == 4


async def test_scheme_bearer_with_hidden_credentials_and_bad_schemes(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(nursery, config(upstream, 'scheme = "Bearer"\nheaders = []\nhide_credentials = true'))
    async with gw.client() as client:
        r = await client.get("/partner", headers={"authorization": f"bearer {BOB_KEY}", "apikey": "ignored"})
        assert r.status_code == 200
    assert "authorization" not in upstream.requests[0].headers
    assert upstream.requests[0].header("apikey") == "ignored"  # not a credential of this route
    assert upstream.requests[0].header("x-consumer-id") == "bob"
    for bad in ('"Bearer"', "Bearer Token", " ", "Bearer="):
        with pytest.raises(ConfigError, match="scheme"):
            await serve(nursery, config(upstream, f"scheme = {bad!r}"))
