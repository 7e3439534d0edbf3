"""Config files the benchmark generates: nginx (upstream and proxy), Bascule's
plugins.toml for each case, and the credentials its auth cases send."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

BIG_BYTES = 100 * 1024


def nginx_upstream(tmp: Path, port: int, body: bytes, name: str) -> Path:
    """nginx answering ``/`` with ``body``, ``/big`` with 100 KB of JSON and
    ``/cacheable...`` with ``body`` and ``Cache-Control: max-age=3600``."""
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    big = www / "big.json"
    if not big.exists():
        filler = "x" * (BIG_BYTES - 16)
        big.write_text(json.dumps({"data": filler})[: BIG_BYTES - 1] + "}")
    text = body.decode()
    return _nginx(
        tmp,
        name,
        f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        root {www};
        location / {{ return 200 '{text}'; }}
        location = /big {{ try_files /big.json =404; }}
        location /cacheable {{ add_header Cache-Control "public, max-age=3600" always; return 200 '{text}'; }}
    }}""",
    )


def nginx_proxy(tmp: Path, port: int, upstream_port: int, name: str) -> Path:
    """nginx ``proxy_pass`` to the upstream through a keep-alive pool."""
    return _nginx(
        tmp,
        name,
        f"""
    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""",
    )


def _nginx(tmp: Path, name: str, server: str) -> Path:
    prefix = tmp / name
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server}
}}
""")
    return conf


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(header: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{header}]"]
    lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def gateway(
    port: int,
    services: Mapping[str, list[str]],
    routes: list[Mapping[str, Any]],
    *,
    admin: int | None = None,
    consumers: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A plugins.toml. A route is a mapping of route keys plus ``plugins``:
    {instance: settings table}; a consumer may carry ``credentials``: {plugin: table}."""
    parts = [_table("gateway", {"listen": f"127.0.0.1:{port}", **({"admin": f"127.0.0.1:{admin}"} if admin else {})})]
    for name, targets in services.items():
        parts.append(_table(f"services.{json.dumps(name)}", {"targets": targets, "timeout": "30s"}))
    for route in routes:
        plugins = route.get("plugins", {})
        parts.append(
            "[[routes]]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in route.items() if k != "plugins") + "\n"
        )
        for instance, settings in plugins.items():
            parts.append(_table(f"routes.plugins.{json.dumps(instance)}", settings))
    for name, consumer in (consumers or {}).items():
        credentials = consumer.get("credentials", {})
        parts.append(_table(f"consumers.{json.dumps(name)}", {k: v for k, v in consumer.items() if k != "credentials"}))
        for plugin, table in credentials.items():
            parts.append(_table(f"consumers.{json.dumps(name)}.credentials.{json.dumps(plugin)}", table))
    return "\n".join(parts)


API_KEY = "bench-key"  # key-auth's API key, of the consumer ``bench`` in ``CONSUMERS``
CONSUMERS = {"bench": {"credentials": {"key-auth": {"keys": [f"sha256:{sha256(API_KEY.encode()).hexdigest()}"]}}}}


def credentials(jwt: JWTKeys) -> dict[str, str]:
    """The jwt case's bearer token and key-auth's API key, as request headers. The costs suite and
    the in-process scripts send both on every route: a route's cost above the bare route is then
    its plugins' work, not the carrying of a longer request."""
    return {"authorization": f"Bearer {jwt.token}", "apikey": API_KEY}


def plugin_settings(tmp: Path, jwt: JWTKeys, redis_url: str = "") -> dict[str, dict[str, Any]]:
    """Each plugin's settings as every bench case and script sets them (after the plugin's README),
    by case name: ``jwt`` (``jwt``'s key), ``key-auth`` (``CONSUMERS``), ``rate-limit-local``,
    ``rate-limit-redis`` (on ``redis_url``), ``logging`` (JSON lines to ``tmp/access.log``),
    ``prometheus`` and ``cache``."""
    limit = {"limit": 10_000_000, "window": "1m", "key": "ip"}  # per minute: never reached (the cap is 1,000,000/s)
    return {
        "jwt": {
            "keys": [{"pem": f"file:{jwt.public_pem}", "algorithms": ["RS256"], "kid": "bench"}],
            "issuers": [jwt.issuer],
            "audiences": [jwt.audience],
        },
        "key-auth": {},
        "rate-limit-local": limit,
        "rate-limit-redis": {**limit, "backend": "redis", "redis_url": redis_url},
        "logging": {"format": "json", "output": str(tmp / "access.log")},
        "prometheus": {},
        "cache": {},
    }


class JWTKeys:
    """An RS256 key pair (public key as a PEM file) and one token signed with it."""

    issuer = "https://issuer.bench.local"
    audience = "bascule-bench"

    def __init__(self, tmp: Path) -> None:
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = tmp / "jwt-public.pem"
        self.public_pem.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        now = int(time.time())
        self.token = jwt.encode(
            {"sub": "bench", "iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + 24 * 3600},
            key,
            algorithm="RS256",
            headers={"kid": "bench"},
        )
