"""Secrets (issue 15): every secret-typed setting, core or plugin, found by walking the
settings models, resolves ``env:NAME``, ``file:PATH`` and ``file+bytes:PATH`` the same way;
nothing named like a secret is a plain string; and no message of ``bascule validate``, no
log line and no admin page carries a secret (nor its first 8 characters)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import pickle
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import httpx
import jwt
import pytest
from bascule.config import ConsumerSettings, GatewaySettings, RouteSettings, ServiceSettings, TargetSettings
from bascule.registry import discover
from bascule.testing import start_gateway, start_upstream
from bascule_sdk.settings import (
    BinarySecret,
    Converter,
    SettingsError,
    UnresolvedSecret,
    offline_secrets,
    parse,
    resolve_secret,
    secret_bytes,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent


# -- the walk -------------------------------------------------------------------------------


def models() -> dict[str, type]:
    """Every settings model: core's, and each installed plugin's Settings and Credentials."""
    found: dict[str, type] = {
        m.__name__: m for m in (GatewaySettings, ServiceSettings, TargetSettings, RouteSettings, ConsumerSettings)
    }
    for name, available in sorted(discover().items()):
        for attr in ("Settings", "Credentials"):
            model = getattr(available.cls, attr, None)
            if model is not None and dataclasses.is_dataclass(model):
                found[f"{name}.{attr}"] = model
    return found


def _nested(tp: Any) -> list[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    return [m for arg in get_args(tp) for m in _nested(arg)]


def fields() -> list[tuple[str, str, Any]]:
    """(model label, field name, type) of every field of every model, nested dataclasses included."""
    out: list[tuple[str, str, Any]] = []
    seen: set[type] = set()

    def walk(label: str, model: type) -> None:
        if model in seen:
            return
        seen.add(model)
        hints = get_type_hints(model, include_extras=True)
        for f in dataclasses.fields(model):
            if not f.init:
                continue
            out.append((label, f.name, hints[f.name]))
            for nested in _nested(hints[f.name]):
                walk(f"{label}.{f.name}", nested)

    for label, model in models().items():
        walk(label, model)
    return out


def converters(tp: Any) -> list[Converter]:
    if get_origin(tp) is Annotated:
        base, *extras = get_args(tp)
        return [e for e in extras if isinstance(e, Converter)] + converters(base)
    return [c for arg in get_args(tp) for c in converters(arg)]


def is_secret(tp: Any) -> bool:
    return any(c.fn is resolve_secret for c in converters(tp))


def plain_str(tp: Any) -> bool:
    """``str``, ``str | None``, ``list[str]``...: text with no converter at all."""
    if tp is str:
        return True
    if get_origin(tp) is Annotated:
        return False
    if get_origin(tp) is dict:
        return plain_str(get_args(tp)[1])  # a table's values (its keys are names)
    return any(plain_str(arg) for arg in get_args(tp))


SECRET_FIELDS = {(label, name) for label, name, tp in fields() if is_secret(tp)}

#: Every secret-typed setting this file configures in the leak tests below: a new one fails
#: ``test_the_leak_tests_cover_every_secret_setting`` until it is covered here too.
COVERED = {
    ("GatewaySettings", "admin_token"),
    ("jwt.Settings.keys", "secret"),
    ("jwt.Settings.keys", "pem"),
    ("jwt.Settings.keys", "jwk"),
    ("rate-limit.Settings", "redis_url"),
    ("cache.Settings", "redis_url"),
}

#: A name that says "secret" (token, password, key material, a URL that may carry credentials).
SECRET_NAME = re.compile(
    r"token|secret|passw|passphrase|credential|private|pem|jwk|hmac|(^|_)keys?$|redis_url|dsn|(^|_)auth", re.I
)
#: Named like a secret but not one, and why.
NOT_SECRETS = {
    ("GatewaySettings", "tls_key"): "the path of the key file, which the TLS library reads",
    ("key-auth.Credentials", "keys"): "SHA-256 digests of the keys (sha256:HEX), never the keys",
    ("rate-limit.Settings", "key"): "what a bucket is keyed by (ip, consumer, header:NAME...)",
}


def test_the_walk_finds_the_known_secret_settings():
    assert COVERED <= SECRET_FIELDS


def test_the_leak_tests_cover_every_secret_setting():
    assert SECRET_FIELDS <= COVERED, f"configure these in the leak tests: {sorted(SECRET_FIELDS - COVERED)}"


def test_every_secret_setting_resolves_env_file_and_file_bytes(tmp_path, monkeypatch):
    value = secrets.token_urlsafe(32)
    monkeypatch.setenv("BASCULE_TEST_SECRET", value)
    (tmp_path / "s").write_text(value + "\n")
    (tmp_path / "b").write_bytes(b"\x00\xff" + value.encode() + b"\n")
    hints = {(label, name): tp for label, name, tp in fields()}
    for where in sorted(SECRET_FIELDS):
        (convert,) = [c.fn for c in converters(hints[where]) if c.fn is resolve_secret]
        assert convert(value) == value, where
        assert convert("env:BASCULE_TEST_SECRET") == value, where
        assert convert(f"file:{tmp_path / 's'}") == value, where
        assert secret_bytes(convert(f"file+bytes:{tmp_path / 'b'}")) == b"\x00\xff" + value.encode() + b"\n", where
        with offline_secrets():
            assert isinstance(convert("env:BASCULE_TEST_SECRET"), UnresolvedSecret), where


def test_no_setting_named_like_a_secret_is_a_plain_string():
    plain = {
        (label, name)
        for label, name, tp in fields()
        if SECRET_NAME.search(name) and plain_str(tp) and (label, name) not in NOT_SECRETS
    }
    assert plain == set(), "type these Secret (or list them in NOT_SECRETS with the reason)"


# -- file+bytes: ----------------------------------------------------------------------------


def test_file_bytes_is_byte_exact_and_never_shows_its_bytes(tmp_path):
    data = secrets.token_bytes(48) + b"\r\n\n"
    (tmp_path / "k").write_bytes(data)
    value = resolve_secret(f"file+bytes:{tmp_path / 'k'}")
    assert isinstance(value, BinarySecret) and secret_bytes(value) == data
    assert value == base64.b64encode(data).decode()  # as text: its base64 (equal bytes, equal settings)
    assert repr(value) == "BinarySecret(<51 bytes>)"
    assert secret_bytes(pickle.loads(pickle.dumps(value))) == data
    assert secret_bytes(copy.deepcopy(value)) == data
    assert secret_bytes("text") == b"text"
    with pytest.raises(ValueError, match="cannot read secret file"):
        resolve_secret(f"file+bytes:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match=r"not UTF-8 text$"):
        resolve_secret(f"file:{tmp_path / 'k'}")  # file: is text only


JWT_CONFIG = """
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "api"
    paths = ["/api"]
    service = "api"
    [routes.plugins.jwt]
    keys = [{{ secret = "{secret}" }}]
"""


async def test_a_binary_hmac_key_file_verifies_tokens_signed_with_its_exact_bytes(nursery, tmp_path):
    key = b"\x00\x80\xfe" + secrets.token_bytes(40) + b"\n"  # not UTF-8, a trailing newline: both kept
    (tmp_path / "hmac.key").write_bytes(key)
    upstream = await start_upstream(nursery)
    gw = await start_gateway(nursery, JWT_CONFIG.format(url=upstream.url, secret=f"file+bytes:{tmp_path / 'hmac.key'}"))
    claims = {"sub": "alice", "exp": 4_000_000_000}
    good = jwt.encode(claims, key, algorithm="HS256")
    trimmed = jwt.encode(claims, key.rstrip(b"\n"), algorithm="HS256")  # what file: would have made of it
    async with gw.client() as client:
        accepted = await client.get("/api", headers={"authorization": f"Bearer {good}"})
        refused = await client.get("/api", headers={"authorization": f"Bearer {trimmed}"})
    assert (accepted.status_code, refused.status_code) == (200, 401)
    assert len(upstream.requests) == 1


def test_a_short_binary_hmac_key_is_refused_by_its_byte_length(tmp_path):
    from bascule_jwt.settings import Settings

    (tmp_path / "short").write_bytes(b"\xff" * 31)
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        parse(Settings, {"keys": [{"secret": f"file+bytes:{tmp_path / 'short'}"}]})
    (tmp_path / "long").write_bytes(b"\xff" * 32)
    assert parse(Settings, {"keys": [{"secret": f"file+bytes:{tmp_path / 'long'}"}]}).keys[0].loaded.key == b"\xff" * 32


# -- no secret in a message, a log line or an admin page --------------------------------------


def marks(*values: str) -> list[str]:
    """What must never be shown of each secret: all of it, and its first 8 characters."""
    return [m for v in values for m in (v, v[:8])]


def assert_hidden(text: str, hidden: list[str], where: str) -> None:
    for mark in hidden:
        assert mark not in text, f"{where} shows secret text {mark[:3]}…"


def test_validate_never_shows_a_secret(tmp_path):
    s = {name: secrets.token_urlsafe(30) for name in ("admin", "short", "pem", "jwk", "rl", "cache", "bin")}
    s["short"] = s["short"][:20]  # an HMAC secret too short
    (tmp_path / "pem-framed").write_text(f"-----BEGIN PUBLIC KEY-----\n{s['pem']}\n-----END PUBLIC KEY-----\n")
    (tmp_path / "pem-bare").write_text(s["pem"] + "\n")
    (tmp_path / "cache-url").write_text(s["cache"] + "\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + s["bin"].encode())
    env = {
        "PATH": "/usr/bin:/bin",
        "T_ADMIN": s["admin"],
        "T_SHORT": s["short"],
        "T_JWK": s["jwk"],
        "T_RL": s["rl"],
        "T_OCT": json.dumps({"kty": "oct", "k": s["jwk"], "alg": "RS256"}),
    }
    config = tmp_path / "gw.toml"
    config.write_text(
        f"""
[gateway]
admin_token = "env:T_ADMIN"
workers = 0
[services.a]
targets = ["http://127.0.0.1:9/"]
[[routes]]
name = "a"
paths = ["/a"]
service = "a"
[routes.plugins.jwt]
keys = [
  {{ secret = "env:T_SHORT" }},
  {{ secret = "{s["short"]}" }},
  {{ secret = "file:{tmp_path / "binary"}" }},
  {{ pem = "file:{tmp_path / "pem-framed"}" }},
  {{ pem = "file:{tmp_path / "pem-bare"}" }},
  {{ pem = "file+bytes:{tmp_path / "pem-bare"}" }},
  {{ jwk = "env:T_JWK" }},
  {{ jwk = "env:T_OCT" }},
  {{ secret = "env:T_SHORT", pem = "file:{tmp_path / "pem-bare"}" }},
]
[[routes]]
name = "b"
paths = ["/b"]
service = "a"
[routes.plugins.rate-limit]
limit = 100
window = "1m"
backend = "redis"
redis_url = "env:T_RL"
[routes.plugins.cache]
backend = "redis"
redis_url = "file:{tmp_path / "cache-url"}"
"""
    )
    hidden = marks(*s.values())
    for args in ([], ["--format", "json"]):
        r = subprocess.run(
            [sys.executable, "-m", "bascule.cli", "validate", *args, str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode != 0
        output = r.stdout + r.stderr
        for expected in ("at least 32 bytes", "cannot load the PEM key", "jwk", "redis_url", "not UTF-8", "workers"):
            assert expected in output, (expected, output)  # every error was reached
        assert_hidden(output, hidden, f"bascule validate {' '.join(args)}")
        assert "symbol" not in output  # cryptography's "Invalid symbol 95, offset 10": a byte of the key


def ec_public_pem() -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RUNNING = """
    [gateway]
    admin_token = "env:T_ADMIN"
    [services.api]
    targets = ["{url}"]
    [[routes]]
    name = "a"
    paths = ["/a"]
    service = "api"
    [routes.plugins.jwt]
    keys = [
      {{ secret = "file:{hmac}" }},
      {{ pem = "file:{pem}", kid = "ec" }},
      {{ jwk = "env:T_JWK", kid = "oct" }},
    ]
    [[routes]]
    name = "b"
    paths = ["/b"]
    service = "api"
    [routes.plugins.rate-limit]
    limit = 100
    window = "1m"
    backend = "redis"
    redis_url = "env:T_RL"
    redis_timeout = "50ms"
    [routes.plugins.cache]
    backend = "redis"
    redis_url = "file:{cache}"
    redis_timeout = "50ms"
"""


async def test_a_running_gateway_never_shows_a_secret(nursery, tmp_path, monkeypatch, caplog):
    admin, hmac, oct_key, rl_pass, cache_pass = (secrets.token_urlsafe(40) for _ in range(5))
    pem = ec_public_pem()
    pem_body = pem.splitlines()[1]
    (tmp_path / "hmac").write_text(hmac + "\n")
    (tmp_path / "pem").write_text(pem)
    (tmp_path / "cache").write_text(f"redis://:{cache_pass}@127.0.0.1:1/0\n")
    monkeypatch.setenv("T_ADMIN", admin)
    oct_k = base64.urlsafe_b64encode(oct_key.encode()).decode().rstrip("=")
    monkeypatch.setenv("T_JWK", json.dumps({"kty": "oct", "k": oct_k}))
    monkeypatch.setenv("T_RL", f"redis://:{rl_pass}@127.0.0.1:1/0")
    caplog.set_level(logging.DEBUG)
    upstream = await start_upstream(nursery)
    config = RUNNING.format(url=upstream.url, hmac=tmp_path / "hmac", pem=tmp_path / "pem", cache=tmp_path / "cache")
    gw = await start_gateway(nursery, config, admin=True)
    claims = {"sub": "alice", "exp": 4_000_000_000}
    oct_token = jwt.encode(claims, oct_key.encode(), algorithm="HS256", headers={"kid": "oct"})
    seen: list[str] = []
    async with gw.client() as client:
        for headers in (
            {"authorization": f"Bearer {jwt.encode(claims, hmac.encode(), algorithm='HS256')}"},
            {"authorization": f"Bearer {oct_token}"},
            {"authorization": "Bearer " + jwt.encode(claims, b"x" * 32, algorithm="HS256")},
            {"authorization": "Bearer not.a.token"},
            {},
        ):
            r = await client.get("/a", headers=headers)
            seen.append(f"{r.status_code} {r.headers} {r.text}")
        assert [s[:3] for s in seen[:2]] == ["200", "200"]  # the configured keys are in force
        for _ in range(2):
            r = await client.get("/b")  # Redis unreachable: errors logged (the URL holds a password)
            seen.append(f"{r.status_code} {r.headers} {r.text}")
    async with httpx.AsyncClient(base_url=gw.admin_url) as client:
        for path in ("/routes", "/plugins", "/upstreams", "/readyz", "/healthz", "/config/status"):
            r = await client.get(path, headers={"authorization": f"Bearer {admin}"})
            assert r.status_code == 200, path
            seen.append(f"{path} {r.headers} {r.text}")
        for token in ("wrong", admin[:-1]):
            r = await client.get("/routes", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401
            seen.append(f"{r.headers} {r.text}")
    logs = "\n".join(f"{rec.name} {rec.getMessage()} {rec.exc_text or ''}" for rec in caplog.records)
    assert "127.0.0.1:1" in logs or "redis" in logs.lower()  # the Redis errors were logged
    hidden = [*marks(admin, hmac, oct_key, oct_k, rl_pass, cache_pass), pem_body, pem_body[-16:]]
    assert_hidden("\n".join(seen), hidden, "a response or an admin page")
    assert_hidden(logs, hidden, "the logs")


def test_settings_reprs_never_show_a_secret(tmp_path, monkeypatch):
    """A model's repr (what a debugger, a traceback or a careless log line shows)."""
    value = secrets.token_urlsafe(40)
    (tmp_path / "k").write_bytes(value.encode())
    parsed = resolve_secret(f"file+bytes:{tmp_path / 'k'}")
    assert_hidden(repr(parsed), marks(value, base64.b64encode(value.encode()).decode()), "repr(BinarySecret)")


@dataclasses.dataclass(frozen=True)
class Quoting:
    """A plugin model whose check quotes the secret it refuses (as a library's message may)."""

    token: Annotated[str, Converter(resolve_secret, "secret")] = ""
    pem: Annotated[str, Converter(resolve_secret, "secret")] | None = None

    def __post_init__(self) -> None:
        if not self.token.startswith("tok_"):
            raise ValueError(f"token: {self.token!r} does not start with tok_; pem line {self.pem!r}")


def test_a_check_that_quotes_a_secret_is_redacted(monkeypatch):
    token, pem = secrets.token_urlsafe(30), secrets.token_urlsafe(30)
    monkeypatch.setenv("T_TOKEN", token)
    with pytest.raises(SettingsError) as caught:
        parse(Quoting, {"token": "env:T_TOKEN", "pem": f"-----BEGIN X-----\n{pem[:12]}"})
    message = str(caught.value)
    assert "does not start with tok_" in message and "[secret]" in message
    assert_hidden(message, [*marks(token), pem[:8]], "a check's message")
