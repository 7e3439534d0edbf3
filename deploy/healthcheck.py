"""Container health check: exit 0 when the gateway of the mounted config answers, 1 otherwise.

    python deploy/healthcheck.py [CONFIG]     (default: $BASCULE_CONFIG or /etc/bascule/plugins.toml)

With an admin listener (``[gateway] admin``) in the config: ``GET /healthz``
there must answer 200 (with ``admin_token`` as a bearer token when set).
Without one: the public listener (``[gateway] listen``) must accept a TCP
connection. A wildcard bind address (``0.0.0.0``, ``::``) is checked on the
loopback address. Standard library only, so it runs in the gateway's image
without anything else installed.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
import urllib.request
from pathlib import Path


def local(address: str) -> tuple[str, int]:
    """``host:port`` of a bind address, as a client on the same host reaches it."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def secret(value: str) -> str:
    """A literal, ``env:NAME`` or ``file:PATH`` value, resolved."""
    if value.startswith("env:"):
        return os.environ.get(value[4:], "")
    if value.startswith("file:"):
        return Path(value[5:]).read_text().strip()
    return value


def healthy(config: Path) -> bool:
    gateway = tomllib.loads(config.read_text()).get("gateway", {})
    try:
        if admin := gateway.get("admin"):
            host, port = local(admin)
            request = urllib.request.Request(f"http://{host if ':' not in host else f'[{host}]'}:{port}/healthz")
            if token := gateway.get("admin_token"):
                request.add_header("Authorization", f"Bearer {secret(token)}")
            with urllib.request.urlopen(request, timeout=3) as response:
                return response.status == 200
        with socket.create_connection(local(gateway.get("listen", "127.0.0.1:8080")), timeout=3):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BASCULE_CONFIG", "/etc/bascule/plugins.toml"))
    sys.exit(0 if healthy(path) else 1)
