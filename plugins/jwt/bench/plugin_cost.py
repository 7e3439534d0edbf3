"""CPU cost of the jwt plugin per request, in process (no sockets, no load generator).

    python plugins/jwt/bench/plugin_cost.py

Times ``on_request`` + ``on_upstream_request`` for one request carrying an
RS256 token: from the verified-token cache (the steady state), and with the
cache off (every request verified). Compare with the gateway's own cost per
request on a bare route (about 660 µs of CPU on the reference machine,
docs/perf-notes): the cached path is the plugin's cost in production.
Reports the median and minimum of 7 repeats (µs per request).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import jwt
import trio
from bascule_jwt import JWTPlugin
from bascule_jwt.settings import Settings
from bascule_sdk import Context, Headers, Request, RouteInfo
from bascule_sdk.settings import parse
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class _Gateway:
    consumers: dict = {}

    def start_soon(self, fn, *args) -> None:  # no JWKS here: nothing runs in the background
        raise AssertionError("not used")


def _plugin(pem: Path, **extra) -> JWTPlugin:
    settings = parse(
        Settings,
        {
            "keys": [{"pem": f"file:{pem}", "kid": "k1", "algorithms": ["RS256"]}],
            "issuers": ["https://idp"],
            "audiences": ["api"],
            **extra,
        },
    )
    return JWTPlugin(settings)


async def _measure(plugin: JWTPlugin | None, token: str, number: int) -> list[float]:
    """µs per request; ``plugin`` None measures the harness alone (context and header copies)."""
    if plugin is not None:
        await plugin.startup(_Gateway())
    headers = Headers.of({"host": "api", "authorization": f"Bearer {token}", "accept": "*/*"})

    async def one() -> None:
        ctx = Context(Request("GET", "/orders", "", headers.copy()), request_id="r", route=RouteInfo("o", "o"))
        upstream = Request("GET", "/orders", "", ctx.request.headers.copy())
        if plugin is not None:
            await plugin.on_request(ctx)
            await plugin.on_upstream_request(ctx, upstream)

    await one()  # warm the cache
    per_call = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(number):
            await one()
        per_call.append((time.perf_counter() - start) / number * 1e6)
    if plugin is not None:
        await plugin.shutdown()
    return per_call


async def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    token = jwt.encode(
        {"sub": "bench", "iss": "https://idp", "aud": "api", "iat": now, "exp": now + 3600, "scope": "orders:read"},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with TemporaryDirectory() as tmp:
        pem = Path(tmp) / "k.pem"
        pem.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        cases: dict[str, tuple[JWTPlugin | None, int]] = {
            "harness alone (subtract from the rows below)": (None, 20_000),
            "RS256 from the verified-token cache": (_plugin(pem), 20_000),
            "RS256 verified every request (cache_size = 0)": (_plugin(pem, cache_size=0), 2_000),
        }
        print(f"token: {len(token)} bytes; µs per request (on_request + on_upstream_request)")
        for name, (plugin, number) in cases.items():
            times = await _measure(plugin, token, number)
            print(f"  {name:<48} median {statistics.median(times):7.2f}  min {min(times):7.2f}")


if __name__ == "__main__":
    trio.run(main)
