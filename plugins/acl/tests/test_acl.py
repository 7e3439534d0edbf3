"""bascule-acl behind the real auth plugins, over real sockets."""

from __future__ import annotations

import hashlib
import time

import jwt
import pytest
from bascule.config import ConfigError
from bascule.testing import start_gateway, start_upstream
from bascule_acl import ACLPlugin
from bascule_jwt import JWTPlugin
from bascule_key_auth import KeyAuthPlugin

SECRET = "acl-test-secret-that-is-32-bytes+"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


CONSUMERS = f"""
    [consumers.alice]
    groups = ["partners"]
    [consumers.alice.credentials.key-auth]
    keys = ["{sha("alice-key")}"]
    [consumers.bob.credentials.key-auth]
    keys = ["{sha("bob-key")}"]
    [consumers.carol]
    groups = ["partners", "banned"]
    [consumers.carol.credentials.key-auth]
    keys = ["{sha("carol-key")}"]
    [consumers.guest]
    groups = ["public"]
"""


def config(upstream, plugins: str) -> str:
    return (
        CONSUMERS
        + f"""
        [services.api]
        targets = ["{upstream.url}"]
        [[routes]]
        name = "partner"
        paths = ["/partner"]
        service = "api"
        {plugins}
    """
    )


async def serve(nursery, text: str):
    return await start_gateway(nursery, text, plugins=[ACLPlugin, KeyAuthPlugin, JWTPlugin], entry_points=False)


def token(**claims) -> str:
    return jwt.encode({"exp": int(time.time()) + 600} | claims, SECRET, algorithm="HS256")


def assert_forbidden(r, detail: str = "You are not allowed to use this route.") -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == detail


async def test_allow_list(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            """
        [routes.plugins.key-auth]
        [routes.plugins.acl]
        allow = ["partners", "staff"]
    """,
        ),
    )
    async with gw.client() as client:
        assert (await client.get("/partner", headers={"apikey": "alice-key"})).status_code == 200
        assert_forbidden(await client.get("/partner", headers={"apikey": "bob-key"}))  # in no group
        assert (await client.get("/partner")).status_code == 401  # auth runs first
    assert [r.header("x-consumer-username") for r in upstream.requests] == ["alice"]


async def test_deny_wins_over_allow(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            """
        [routes.plugins.key-auth]
        [routes.plugins.acl]
        allow = ["partners"]
        deny = ["banned"]
    """,
        ),
    )
    async with gw.client() as client:
        assert_forbidden(await client.get("/partner", headers={"apikey": "carol-key"}))
        assert (await client.get("/partner", headers={"apikey": "alice-key"})).status_code == 200
    assert len(upstream.requests) == 1


async def test_deny_only_and_groups_from_jwt_claims(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            f"""
        [routes.plugins.jwt]
        keys = [{{ secret = "{SECRET}" }}]
        [routes.plugins.acl]
        deny = ["suspended"]
    """,
        ),
    )
    async with gw.client() as client:
        ok = {"authorization": f"Bearer {token(sub='dave', groups=['ops'])}"}
        assert (await client.get("/partner", headers=ok)).status_code == 200
        suspended = {"authorization": f"Bearer {token(sub='erin', groups='ops suspended')}"}
        assert_forbidden(await client.get("/partner", headers=suspended))
    assert [r.header("x-consumer-id") for r in upstream.requests] == ["dave"]


async def test_no_consumer_is_refused(nursery):
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            """
        [routes.plugins.acl]
        deny = ["banned"]
    """,
        ),
    )
    async with gw.client() as client:
        r = await client.get("/partner", headers={"x-consumer-groups": "partners"})
        assert_forbidden(r, "This route requires an authenticated consumer.")
    assert upstream.requests == []


async def test_either_key_or_token_with_anonymous_blocked_by_acl(nursery):
    """Both auth plugins with ``anonymous``: either credential admits; none leaves the ACL to refuse."""
    upstream = await start_upstream(nursery)
    gw = await serve(
        nursery,
        config(
            upstream,
            f"""
        [routes.plugins.key-auth]
        anonymous = "guest"
        [routes.plugins.jwt]
        keys = [{{ secret = "{SECRET}" }}]
        anonymous = "guest"
        [routes.plugins.acl]
        deny = ["public"]
    """,
        ),
    )
    async with gw.client() as client:
        assert (await client.get("/partner", headers={"apikey": "bob-key"})).status_code == 200
        bearer = {"authorization": f"Bearer {token(sub='dave')}"}
        assert (await client.get("/partner", headers=bearer)).status_code == 200
        assert_forbidden(await client.get("/partner"))  # the anonymous guest is in "public"
        # A bad credential of either kind is a 401, never a fall-back to anonymous.
        assert (await client.get("/partner", headers={"apikey": "nope"})).status_code == 401
        assert (await client.get("/partner", headers={"authorization": "Bearer x.y.z"})).status_code == 401
    assert [r.header("x-consumer-id") for r in upstream.requests] == ["bob", "dave"]


async def test_settings_are_validated(nursery):
    upstream = await start_upstream(nursery)
    for table, message in (
        ("", "give allow or deny"),
        ('allow = ["a"]\ndeny = ["a"]', "groups both allowed and denied: a"),
        ("allow = 'partners'", "expected an array"),
    ):
        with pytest.raises(ConfigError) as e:
            await serve(nursery, config(upstream, f"[routes.plugins.acl]\n{table}"))
        assert message in str(e.value) and 'route "partner"' in str(e.value), str(e.value)


def test_installed_under_its_entry_point():
    from bascule.registry import discover

    assert discover()["acl"].cls is ACLPlugin


def test_readme_documents_every_setting():
    from dataclasses import fields
    from pathlib import Path

    from bascule_acl.settings import Settings

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for f in fields(Settings):
        assert f"| `{f.name}` |" in readme, f.name
