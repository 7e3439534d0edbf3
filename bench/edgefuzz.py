"""Edge fuzzing of a real ``bascule run`` process: hostile HTTP/1.x bytes on the
plain port, HTTP/2 attacks over TLS, and well-behaved clients alongside.

One implementation for ``tests/test_fuzz_edge.py``, ``tests/test_fuzz_h2.py``
and ``bench/fuzz.py`` (import it with ``bench/`` on ``sys.path``).

- ``Upstream``: an echo server (``bascule.testing``'s ``echo``) in its own
  process, on a port it bound itself (``python bench/edgefuzz.py upstream``).
- ``Gateway``: ``python -m bascule.cli run`` on a generated plugins.toml with
  free ports; started only once its admin ``/healthz`` names this process
  (or one of its workers) and a request goes through to this upstream.
- ``case(seed, index, limit)``: the fuzz input number ``index`` of a seeded
  run; the same (seed, index) always gives the same bytes, whatever ran
  before, so any input can be replayed (``bench/fuzz.py --replay``).
- ``fuzz(...)``: sends inputs on fresh connections while well-behaved clients
  check their answers, and watches the process and its memory.
- ``ATTACKS``: HTTP/2 attacks (rapid reset, CONTINUATION flood, SETTINGS
  flood, huge header list, HPACK bomb), each bounded in count and time.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from bascule.testing import self_signed_cert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_port, memory_kib, tree

ROOT = Path(__file__).resolve().parent.parent
MAX_HEADER_SIZE = 16 * 1024  # [gateway] max_header_size of the fuzzed config (its default)

# A log record as bascule's logging.basicConfig formats it; a traceback belongs to the record above it.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\S+) ([A-Z]+) (.*)$")
CONTAINED = "connection error from"  # message of a connection error the server caught and logged


# ---------------------------------------------------------------------------------------------
# Processes


class Upstream:
    """``bascule.testing``'s echo upstream in its own process; ``url`` once started."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "upstream"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # the child prints its URL once listening
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the echo upstream did not start (printed {line!r})")
        self.url = line

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_upstream() -> None:
    from bascule.testing import echo, start_upstream

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upstream = await start_upstream(nursery)

            async def handler(request: Any) -> Any:
                upstream.requests.clear()  # the recorder would grow for the whole run
                return await echo(request)

            upstream.handler = handler
            print(upstream.url, flush=True)

    trio.run(main)


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """TERM then KILL ``proc``'s process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


class Gateway:
    """``python -m bascule.cli run`` on a generated config in ``directory``; stderr in ``log``.

    ``start()`` returns once the admin ``/healthz`` pid is this process (1
    worker) or one of its ``workers`` worker processes, and a request to a
    path made for this run comes back echoed by this run's upstream.
    """

    def __init__(
        self, directory: Path, upstream_url: str, *, workers: int = 1, tls: bool = False, tracebacks: bool = False
    ) -> None:
        self.tracebacks = tracebacks  # log contained errors with their traceback (logger "bascule" at DEBUG)
        self.port, self.admin_port = free_port(), free_port()
        self.workers = workers
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "plugins.toml"
        self.log = directory / "bascule.log"
        tls_keys = ""
        if tls:
            cert, key = self_signed_cert(directory)
            tls_keys = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        self.config.write_text(f"""
[gateway]
listen = "127.0.0.1:{self.port}"
admin = "127.0.0.1:{self.admin_port}"
workers = {workers}
max_header_size = {MAX_HEADER_SIZE}
max_body_size = "1MiB"
graceful_timeout = "3s"
{tls_keys}
[services.echo]
targets = ["{upstream_url}"]
timeout = "10s"

[[routes]]
name = "everything"
paths = ["/"]
service = "echo"
""")
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def start(self, timeout: float = 60.0) -> Gateway:
        command = [sys.executable, "-m", "bascule.cli", "run", "-c", str(self.config)]
        if self.tracebacks:
            command[1:3] = ["-c", _DEBUG_RUN]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        token = f"/ready/{os.urandom(6).hex()}"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, verify=False) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"bascule exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
                try:
                    pid = http.get(self.admin + "/healthz").json()["pid"]
                    answer = http.get(self.url + token)
                    ours = pid == self.proc.pid if self.workers == 1 else pid in self.worker_pids()
                    if (
                        ours
                        and answer.status_code == 200
                        and answer.json()["path"] == token
                        and len(self.worker_pids()) == self.workers
                    ):
                        self.pids = self.worker_pids()
                        return self
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"bascule did not come up on port {self.port}:\n{self.log_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """The ``bascule run`` process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> set[int]:
        """The serving processes: this one (1 worker), or the supervisor's worker children."""
        if self.workers == 1:
            return {self.pid}
        found = set()
        for p in tree(self.pid):
            try:
                if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                    found.add(p)
            except OSError:
                pass
        return found

    def rss_kib(self) -> int:
        """VmRSS summed over the process tree (supervisor and workers)."""
        return memory_kib(self.pid)["rss"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def problems(self) -> list[str]:
        """What the log shows went wrong: uncontained tracebacks and worker exits (see ``log_problems``)."""
        return log_problems(self.log_text())

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL); the exit code, or None if it had to be killed."""
        if self.proc is None:
            return None
        _stop(self.proc)
        return self.proc.returncode

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ``bascule run`` with the "bascule" logger at DEBUG: contained errors come with their traceback.
_DEBUG_RUN = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("bascule").setLevel(logging.DEBUG)
from bascule.cli import main
sys.exit(main(sys.argv[1:]))
"""


def log_problems(text: str) -> list[str]:
    """Uncontained errors in a bascule log, one string each.

    - a traceback (any line with "Traceback (most recent call last)",
      exception groups included) that does not belong to a log record whose
      message starts with "connection error from" (a connection error the
      server caught and logged); a traceback belongs to the nearest log
      record above it, and one above every record belongs to none;
    - the supervisor's "worker N exited" (a worker process died).
    """
    problems: list[str] = []
    owner: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        record = _RECORD.match(line)
        if record:
            owner = record.group(3)
            if re.match(r"worker \d+ exited", owner):
                problems.append(line)
        elif "Traceback (most recent call last)" in line and not (owner or "").startswith(CONTAINED):
            end = next((j for j in range(i + 1, len(lines)) if _RECORD.match(lines[j])), len(lines))
            block = lines[max(0, i - 1) : end]  # the record, the traceback's head ... and its exception
            problems.append("\n".join(block if len(block) <= 12 else [*block[:4], "  ...", *block[-6:]]))
            owner = CONTAINED  # one report per traceback block
    return problems


def contained_errors(text: str) -> int:
    """How many "connection error from" records the log holds."""
    return sum(1 for line in text.splitlines() if (m := _RECORD.match(line)) and m.group(3).startswith(CONTAINED))


# ---------------------------------------------------------------------------------------------
# HTTP/1.x inputs


@dataclass
class Case:
    """One fuzz input: ``chunks`` sent in order on a fresh connection (``pause`` s
    between them), then ``finish``: "read" the answer, "shutdown" our write side
    and read, or "close" at once."""

    kind: str
    chunks: list[bytes]
    finish: str = "read"
    pause: float = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


INTERESTING = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b"\r\n ",
    b"\r\n\t",
    b"chunked",
    b"\xff",
    b"\x7f",
    b"%00",
    b"HTTP/1.0",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Host: a\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"-1",
    b"99999999999999999999",
    b";",
    b",",
    b"\x1b",
    b"\x0b",
    b"\x0c",
    b"\xc0\xaf",
    b"/..",
    b"?",
    b"#",
]
METHODS = [
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"PRI",
    b"get",
    b"G\x00T",
    b"GET ",
    b"",
    b"X" * 300,
    b"\xffGET",
    b"M-SEARCH",
    b"GET\t",
]
TARGETS = [
    b"/",
    b"*",
    b"",
    b"//",
    b"/../../etc/passwd",
    b"/%00",
    b"/\x00",
    b"/ /",
    b"/a b",
    b"http://",
    b"\xff",
    b"?",
    b"#frag",
    b"/%2e%2e/%2F",
    b"http://a.example/x",
    b"127.0.0.1:1",
    b"/" + b"a" * 9000,
    b"/?q=" + b"%" * 50,
    b"/\r/",
    b"/\t",
    b"/%",
    b"/%zz",
    b"HTTP/1.1",
]
VERSIONS = [
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/1.2",
    b"HTTP/9.9",
    b"HTTP/1",
    b"HTTP/1.1x",
    b"http/1.1",
    b"HTTP/0.9",
    b"HTTP/1.1 ",
    b"",
    b"HTTP/1.01",
    b"HTTP/11",
    b"HTTP/ 1.1",
]
CL_VALUES = [
    b"5",
    b"0",
    b"+5",
    b"-1",
    b" 5 ",
    b"5, 5",
    b"5,6",
    b"0x5",
    b"99999999999999999999999",
    b"",
    b"5\x00",
    b"1e3",
    b"\xd9\xa5",
]
TE_VALUES = [
    b"chunked",
    b"Chunked",
    b" chunked",
    b"chunked, identity",
    b"identity, chunked",
    b"gzip, chunked",
    b"xchunked",
    b"chunked\x00",
    b"identity",
    b"chunked;q=1",
    b"\tchunked",
    b"chunked, chunked",
    b"",
]
CHUNK_SIZES = [
    b"5",
    b"zz",
    b"-1",
    b"0x5",
    b" 5",
    b"5 ",
    b"ffffffffffffffffffffffff",
    b"5;ext=val",
    b"5;" + b"e" * 5000,
    b"5\x00",
    b"05",
    b"000000000000000000005",
    b'5;a="b"',
    b"5 ;x",
    b"",
    b"FFFFFFFF",
    b"1\t",
]


def _path(rng: random.Random) -> bytes:
    return b"/fz/%d" % rng.randrange(10**6)


def valid(rng: random.Random) -> bytes:
    """One well-formed request (the corpus mutated by ``mutate``)."""
    p = _path(rng)
    body = bytes(rng.choice(b"abcdefgh") for _ in range(rng.randrange(0, 64)))
    choices: list[bytes] = [
        b"GET %s HTTP/1.1\r\nHost: a\r\nUser-Agent: fz\r\nAccept: */*\r\n\r\n" % p,
        b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (p, len(body), body),
        b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n3;x=y\r\nabc\r\n0\r\n"
        b"T: 1\r\n\r\n" % (p, len(body), body),
        b"GET %s HTTP/1.0\r\n\r\n" % p,
        b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\n\r\n" % p,
        b"HEAD %s HTTP/1.1\r\nHost: a\r\n\r\n" % p,
        b"GET http://a.example%s?x=1 HTTP/1.1\r\nHost: b\r\n\r\n" % p,
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % p,
        b"PUT %s HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n%s" % (p, len(body), body),
        b"GET %s HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" % p,
        b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" % p,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
        b"DELETE %s HTTP/1.1\r\nHost: a\r\nCookie: a=b; c=d\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"Forwarded: for=1.2.3.4\r\nX-Request-ID: ../../x\r\n\r\n" % p,
    ]
    return rng.choice(choices)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 byte-level mutations: flips, interesting tokens, deletions, duplications, line-ending swaps."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.choice(INTERESTING)
        elif op == 3 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 4 and b:
            end = min(len(b), pos + rng.randint(1, 64))
            b[end:end] = b[pos:end] * rng.randint(1, 50)
        elif op == 5:
            b = bytearray(bytes(b).replace(b"\r\n", rng.choice([b"\n", b"\r", b"\n\r", b"\r\r\n"])))
        elif op == 6:
            del b[pos:]
        else:
            b[pos:pos] = valid(rng)
    return bytes(b)


def _head(method: bytes, target: bytes, version: bytes, headers: list[bytes], eol: bytes = b"\r\n") -> bytes:
    return method + b" " + target + b" " + version + eol + b"".join(h + eol for h in headers) + eol


def _framing(rng: random.Random) -> Case:
    """Content-Length / Transfer-Encoding combinations, HTTP/1.0 and 1.1, bodies and bytes after them."""
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.0"])
    headers = [b"Host: a"] if rng.random() < 0.8 else []
    for _ in range(rng.choice([0, 1, 1, 2])):
        headers.append(
            rng.choice([b"Content-Length: ", b"content-length: ", b"Content-Length:", b"Content-Length : "])
            + rng.choice(CL_VALUES)
        )
    for _ in range(rng.choice([0, 1, 1, 2])):
        headers.append(
            rng.choice([b"Transfer-Encoding: ", b"transfer-encoding:", b"Transfer-Encoding : "]) + rng.choice(TE_VALUES)
        )
    rng.shuffle(headers)
    body = rng.choice(
        [
            b"0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"hello",
            b"",
            b"0\r\n\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\nContent-Length: 9\r\n\r\n",
        ]
    )
    after = rng.choice(
        [
            b"",
            b"",
            b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /smuggled HTTP/1.0\r\n\r\n",
            b"X",
            b"0\r\n\r\n",
            valid(rng),
        ]
    )
    data = _head(b"POST", _path(rng), version, headers) + body + after
    return Case("framing", [data], rng.choice(["read", "read", "shutdown"]))


def _chunks(rng: random.Random) -> Case:
    """Chunked bodies: bad sizes, extensions, size mismatches, trailers, missing last chunk."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        size = rng.choice(CHUNK_SIZES)
        data = b"hello" if rng.random() < 0.7 else b"x" * rng.choice([0, 1, 4, 6, 100])
        eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r", b""])
        parts.append(size + eol + data + eol)
    if rng.random() < 0.7:
        parts.append(b"0\r\n")
        parts.extend(
            rng.sample(
                [
                    b"Trailer: 1\r\n",
                    b"Content-Length: 5\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"X-Big: " + b"t" * 20000 + b"\r\n",
                    b"bad trailer\r\n",
                    b"\x00: \x00\r\n",
                ],
                k=rng.randint(0, 2),
            )
        )
        parts.append(b"\r\n")
    head = _head(
        b"POST", _path(rng), rng.choice([b"HTTP/1.1", b"HTTP/1.0"]), [b"Host: a", b"Transfer-Encoding: chunked"]
    )
    return Case("chunked", [head + b"".join(parts)], rng.choice(["read", "shutdown", "close"]))


def _syntax(rng: random.Random) -> Case:
    """Request-line parts, header syntax: obs-fold, bare LF/CR, NUL and control bytes, odd names."""
    headers = [b"Host: a"]
    weird = [
        b"X-A: 1\r\n folded",
        b"X-A: 1\r\n\tfolded",
        b" Leading: space",
        b"NoColon",
        b": empty-name",
        b"X-A : space-before-colon",
        b"X-A: a\x00b",
        b"X-A: a\x7fb",
        b"X-\xff: v",
        b"X\tA: v",
        b"X-A: \x1b[31m",
        b"Host: b",
        b"Host:",
        b"X-A:" + b"\x80" * 10,
        b"X-A: a\rb",
        b"X-A: a\nb",
        b"Content-Length: 0",
        b"Connection: keep-alive, Upgrade",
        b"X-A: " + b" " * 1000,
        b"\x00",
        b"Cookie: " + b"a=b; " * 500,
    ]
    headers += rng.sample(weird, k=rng.randint(1, 4))
    rng.shuffle(headers)
    if rng.random() < 0.3:
        headers.remove(b"Host: a")
    method = rng.choice(METHODS) if rng.random() < 0.5 else b"GET"
    target = rng.choice(TARGETS) if rng.random() < 0.5 else _path(rng)
    version = rng.choice(VERSIONS) if rng.random() < 0.5 else b"HTTP/1.1"
    eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"])
    return Case("syntax", [_head(method, target, version, headers, eol)])


def _pipeline(rng: random.Random) -> Case:
    """2-20 requests (some mutated) in one send, or cut into random pieces."""
    data = b"".join(mutate(rng, valid(rng)) if rng.random() < 0.3 else valid(rng) for _ in range(rng.randint(2, 20)))
    if rng.random() < 0.5:
        return Case("pipeline", [data])
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 8))))
    return Case("pipeline", [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)], pause=0.01)


def _split(rng: random.Random) -> Case:
    """One request sent a few bytes at a time."""
    data = valid(rng)
    step = rng.randint(1, 7)
    return Case("split", [data[i : i + step] for i in range(0, len(data), step)][:60], pause=0.002)


def _garbage(rng: random.Random) -> Case:
    """Random bytes, printable noise, empty lines, or a binary prefix before a request."""
    n = rng.choice([1, 2, 16, 300, 4096])
    data = rng.choice(
        [
            bytes(rng.randrange(256) for _ in range(n)),
            bytes(rng.randrange(32, 127) for _ in range(n)),
            b"\r\n" * n,
            b"\r\n" * n + valid(rng),
            bytes(rng.randrange(256) for _ in range(8)) + valid(rng),
            b"\x16\x03\x01" + bytes(rng.randrange(256) for _ in range(n)),
            b"SSH-2.0-OpenSSH_9.0\r\n",
            b"\x05\x01\x00",  # SOCKS5
        ]
    )
    return Case("garbage", [data], rng.choice(["read", "shutdown", "close"]))


def _partial(rng: random.Random) -> Case:
    """A head or body cut short, then close, half-close, or wait."""
    data = valid(rng)
    if rng.random() < 0.3:
        data = b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (
            _path(rng),
            rng.choice([100, 10**6, 2 * 10**6]),
            b"x" * rng.randrange(50),
        )
    else:
        data = data[: rng.randrange(1, len(data))]
    return Case("partial", [data], rng.choice(["close", "shutdown", "read"]))


_CLIENT_HELLO: bytes | None = None


def client_hello() -> bytes:
    """A real TLS ClientHello (offering h2 and http/1.1), as a browser would send it."""
    global _CLIENT_HELLO
    if _CLIENT_HELLO is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        out = ssl.MemoryBIO()
        tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        _CLIENT_HELLO = out.read()
    return _CLIENT_HELLO


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _alien(rng: random.Random) -> Case:
    """TLS and HTTP/2 on the plain port: a ClientHello, the h2 preface (prior knowledge), bits of them."""
    from hyperframe.frame import HeadersFrame, SettingsFrame

    settings = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()
    headers = HeadersFrame(1, data=b"\x82\x86\x84\x01\x01a", flags=["END_HEADERS", "END_STREAM"]).serialize()
    data = rng.choice(
        [
            client_hello(),
            client_hello()[: rng.randint(1, 100)],
            PREFACE,
            PREFACE + settings,
            PREFACE + settings + headers,
            PREFACE[: rng.randint(1, len(PREFACE))],
            PREFACE + bytes(rng.randrange(256) for _ in range(64)),
            client_hello() + valid(rng),
        ]
    )
    return Case("tls-h2", [data], rng.choice(["read", "shutdown", "close"]))


def _huge(rng: random.Random, limit: int) -> Case:
    """Heads near and beyond ``limit``: one big header, thousands of small ones, a long target, unfinished."""
    size = rng.choice([limit - 200, limit - 1, limit, limit + 1, limit + 100, 2 * limit, 8 * limit, 64 * limit])
    shape = rng.randrange(3)
    start = b"GET %s HTTP/1.1\r\nHost: a\r\n" % _path(rng)
    if shape == 0:
        head = start + b"X-Big: " + b"b" * max(0, size - len(start) - 11) + b"\r\n"
    elif shape == 1:
        head = start + b"a: b\r\n" * max(0, (size - len(start) - 2) // 6)
    else:
        path = b"/fz/" + b"p" * max(0, size - 30)
        head = b"GET %s HTTP/1.1\r\nHost: a\r\n" % path
    finished = rng.random() < 0.7
    data = head + (b"\r\n" if finished else b"")
    pieces = [data] if rng.random() < 0.5 else [data[i : i + 65536] for i in range(0, len(data), 65536)]
    return Case(f"huge-{'done' if finished else 'open'}", pieces, rng.choice(["read", "read", "close"]))


def case(seed: int, index: int, limit: int = MAX_HEADER_SIZE) -> Case:
    """Input number ``index`` of the run ``seed`` (deterministic, independent of the others)."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(
        [
            "mutated",
            "framing",
            "chunked",
            "syntax",
            "pipeline",
            "split",
            "garbage",
            "partial",
            "tls-h2",
            "huge",
            "valid",
        ],
        weights=[25, 15, 10, 12, 6, 3, 6, 6, 4, 6, 7],
    )[0]
    if kind == "mutated":
        return Case("mutated", [mutate(rng, valid(rng))], rng.choice(["read", "read", "shutdown", "close"]))
    if kind == "valid":
        return Case("valid", [valid(rng)])
    if kind == "huge":
        return _huge(rng, limit)
    return {
        "framing": _framing,
        "chunked": _chunks,
        "syntax": _syntax,
        "pipeline": _pipeline,
        "split": _split,
        "garbage": _garbage,
        "partial": _partial,
        "tls-h2": _alien,
    }[kind](rng)


# The crash this fuzzer found first (hypercorn issue #203): the app answers 400 to an
# ambiguous HTTP/1.0 request while h11 fails on the bytes after its last chunk.
CRASH_REQUEST = (
    b"POST /routed-path HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /routed-path HTTP/1.1\r\nHost: a\r\n\r\n"
)


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass
class Answer:
    """What came back on one connection: the bytes (up to a cap), and how it ended."""

    data: bytes = b""
    eof: bool = False  # the server closed (FIN)
    reset: bool = False  # the server reset the connection
    refused: bool = False  # no connection at all

    @property
    def status(self) -> int | None:
        """The first status code, if the answer starts with an HTTP/1.x status line."""
        data = self.data
        while (m := re.match(rb"HTTP/1\.[01] (1\d\d)[^\r\n]*\r\n\r\n", data)) and m.group(1) != b"101":
            data = data[m.end() :]  # an interim 100 Continue: the final answer follows
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else None

    def head(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0]


async def exchange(port: int, case: Case, *, wait: float = 0.5, cap: int = 1 << 20) -> Answer:
    """Send ``case`` to 127.0.0.1:``port`` on a new connection and collect the answer.

    Reads until the server closes, nothing arrives for ``wait`` s (0.3 s once
    something arrived) or ``cap`` bytes came; then closes. Never raises for
    what the server does to the connection.
    """
    answer = Answer()
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        answer.refused = True
        return answer
    try:
        for i, chunk in enumerate(case.chunks):
            if i and case.pause:
                await trio.sleep(case.pause)
            await stream.send_all(chunk)
        if case.finish == "close":
            return answer
        if case.finish == "shutdown":
            await stream.send_eof()
        while len(answer.data) < cap:
            with trio.move_on_after(0.3 if answer.data else wait):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    answer.eof = True
                    return answer
                answer.data += chunk
                continue
            return answer
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        answer.reset = True
    finally:
        await stream.aclose()
    return answer


# ---------------------------------------------------------------------------------------------
# Watching: well-behaved clients, the process, memory


@dataclass
class Watch:
    """Figures of one run; ``ok`` states the contract."""

    seconds: float = 0.0
    inputs: int = 0
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # first status of each fuzz answer ("none", "reset", ...)
    server_errors: list[str] = field(default_factory=list)  # fuzz inputs answered 500 (a crash inside the app)
    good_sent: int = 0
    good_lost: int = 0
    good_failures: list[str] = field(default_factory=list)
    died_at: float | None = None  # seconds into the run when the process was first seen gone
    exit_code: int | None = None
    worker_pids_start: list[int] = field(default_factory=list)
    worker_pids_end: list[int] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, KiB)
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    log_problems: list[str] = field(default_factory=list)
    contained: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mib(self) -> float:
        return (self.rss_end_kib - self.rss_warm_kib) / 1024

    @property
    def slope_kib_per_min(self) -> float:
        """Least-squares RSS slope over the samples after warm-up."""
        pts = [(t, r) for t, r in self.rss_samples if r][1:]
        if len(pts) < 2:
            return 0.0
        mt = sum(t for t, _ in pts) / len(pts)
        mr = sum(r for _, r in pts) / len(pts)
        var = sum((t - mt) ** 2 for t, _ in pts)
        return sum((t - mt) * (r - mr) for t, r in pts) / var * 60 if var else 0.0

    @property
    def exits(self) -> int:
        """Process exits seen: the gateway itself, plus workers replaced (pids that changed)."""
        return (
            int(self.died_at is not None)
            + len(set(self.worker_pids_start) - set(self.worker_pids_end))
            + sum("exited" in p for p in self.log_problems if p.count("\n") == 0)
        )

    def failures(self, max_growth_mib: float = 50.0) -> list[str]:
        """Every broken promise, in words (empty: the run passed)."""
        out = []
        if self.died_at is not None:
            out.append(f"the gateway exited ({self.exit_code}) {self.died_at:.1f} s into the run")
        if set(self.worker_pids_start) != set(self.worker_pids_end):
            out.append(f"worker processes changed: {sorted(self.worker_pids_start)} -> {sorted(self.worker_pids_end)}")
        if self.good_lost:
            out.append(f"{self.good_lost} of {self.good_sent} well-behaved requests lost: {self.good_failures[:5]}")
        if self.server_errors:
            out.append(f"{len(self.server_errors)} fuzz inputs answered 500: {self.server_errors[:5]}")
        out += [f"log: {p}" for p in self.log_problems[:5]]
        if self.rss_growth_mib >= max_growth_mib:
            out.append(f"RSS grew {self.rss_growth_mib:.1f} MiB after warm-up (bound {max_growth_mib} MiB)")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "inputs": self.inputs,
            "inputs_per_minute": round(self.inputs / self.seconds * 60) if self.seconds else 0,
            "kinds": dict(self.kinds),
            "statuses": {str(k): v for k, v in self.statuses.most_common()},
            "server_errors": self.server_errors[:10],
            "exits": self.exits,
            "exit_code": self.exit_code,
            "good_sent": self.good_sent,
            "good_lost": self.good_lost,
            "good_failures": self.good_failures[:10],
            "rss_warm_mib": round(self.rss_warm_kib / 1024, 1),
            "rss_end_mib": round(self.rss_end_kib / 1024, 1),
            "rss_peak_mib": round(self.rss_peak_kib / 1024, 1),
            "rss_growth_mib": round(self.rss_growth_mib, 1),
            "rss_slope_kib_per_min": round(self.slope_kib_per_min),
            "contained_errors_logged": self.contained,
            "log_problems": self.log_problems[:5],
            **self.extra,
        }


async def good_client(
    gw: Gateway, watch: Watch, index: int, stop: trio.Event, *, http2: bool = False, pause: float = 0.01
) -> None:
    """Send correct requests on one keep-alive client until ``stop`` (``pause`` s apart); check each answer.

    An answer is correct when its status is 200 and the upstream's echo
    names the method, path, query and body sent (and, with ``http2``, it came
    over HTTP/2). Anything else, exceptions included, counts as lost.
    """
    async with httpx.AsyncClient(base_url=gw.url, timeout=30, verify=False, http2=http2) as http:
        n = 0
        while not stop.is_set() and n < 10**7:
            n += 1
            # Never an empty POST body: over HTTP/2 that hits a hypercorn bug of its own (its
            # test is tests/test_fuzz_h2.py::test_data_after_an_early_answer_keeps_the_connection).
            path, body = f"/good/{index}/{n}", (b"b%d" % n) * (1 + n % 7)
            method = "POST" if n % 3 == 0 else "GET"
            watch.good_sent += 1
            try:
                r = await http.request(method, path, params={"n": n}, content=body if method == "POST" else None)
                echo = r.json() if r.status_code == 200 else None
                ok = echo == {
                    "method": method,
                    "path": path,
                    "query": f"n={n}",
                    "body": body.decode() if method == "POST" else "",
                }
                ok = ok and (not http2 or r.http_version == "HTTP/2")
                why = f"{r.http_version} {r.status_code} {r.text[:200]!r}"
            except (httpx.HTTPError, ValueError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if not ok:
                watch.good_lost += 1
                if len(watch.good_failures) < 20:
                    watch.good_failures.append(f"{method} {path}: {why}")
            await trio.sleep(pause)


async def watch_process(gw: Gateway, watch: Watch, stop: trio.Event, started: float) -> None:
    """Poll the process every 0.1 s and its RSS every second until ``stop``."""
    last_sample = -1.0
    while not stop.is_set():
        now = time.monotonic() - started
        if not gw.alive() and watch.died_at is None:
            watch.died_at, watch.exit_code = now, gw.proc.returncode if gw.proc else None
        if now - last_sample >= 1.0 and watch.died_at is None:
            rss = gw.rss_kib()
            watch.rss_samples.append((now, rss))
            watch.rss_peak_kib = max(watch.rss_peak_kib, rss)
            last_sample = now
        with trio.move_on_after(0.1):
            await stop.wait()


async def run_with_watch(
    gw: Gateway, attack: Callable[[Watch], Awaitable[None]], *, good: int = 3, good_h2: int = 0, warmup: float = 3.0
) -> Watch:
    """Run ``attack`` while ``good`` HTTP/1.1 (and ``good_h2`` HTTP/2) clients and the watcher run.

    The well-behaved clients start ``warmup`` s before the attack (the RSS
    baseline is taken then) and run 1 s past its end; the result includes
    the log check and the worker pids before and after.
    """
    watch = Watch(worker_pids_start=sorted(gw.pids))
    stop = trio.Event()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_process, gw, watch, stop, started)
        for i in range(good):
            nursery.start_soon(good_client, gw, watch, i, stop)
        for i in range(good_h2):
            nursery.start_soon(partial(good_client, http2=True), gw, watch, good + i, stop)
        await trio.sleep(warmup)
        watch.rss_warm_kib = gw.rss_kib()
        watch.rss_samples = [(t, r) for t, r in watch.rss_samples if t >= warmup]
        t0 = time.monotonic()
        await attack(watch)
        watch.seconds = time.monotonic() - t0
        await trio.sleep(1.0)
        stop.set()
    if gw.alive():
        watch.rss_end_kib = gw.rss_kib()
        watch.worker_pids_end = sorted(gw.worker_pids())
    text = gw.log_text()
    watch.log_problems, watch.contained = log_problems(text), contained_errors(text)
    return watch


# ---------------------------------------------------------------------------------------------
# The HTTP/1.x fuzzer


async def fuzz(
    gw: Gateway, seconds: float, seed: int, *, concurrency: int = 12, good: int = 3, max_inputs: int = 10**7
) -> Watch:
    """Send fuzz inputs for ``seconds``, ``concurrency`` connections at a time, after a
    warm-up of max(3 s, 10%) that fuzzes too (the RSS baseline is taken after it).

    A fuzz answer of 500 is recorded as a server error (the gateway's own
    failure: the upstream here never fails). Stops early if the process dies.
    """
    warmup = max(3.0, seconds * 0.1)
    counter = iter(range(max_inputs))

    async def attack(watch: Watch) -> None:
        deadline = trio.current_time() + seconds

        async def sender() -> None:
            for index in counter:
                if trio.current_time() > deadline or watch.died_at is not None:
                    return
                c = case(seed, index)
                a = await exchange(gw.port, c)
                watch.inputs += 1
                watch.kinds[c.kind] += 1
                key: int | str = a.status or (
                    "refused"
                    if a.refused
                    else "reset"
                    if a.reset
                    else "closed"
                    if a.eof and not a.data
                    else "none"
                    if not a.data
                    else "other"
                )
                watch.statuses[key] += 1
                if a.status == 500 and len(watch.server_errors) < 50:
                    watch.server_errors.append(f"seed {seed} input {index} ({c.kind}): {c.data[:120]!r}")

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(sender)

    # Warm-up fuzzes too (so the baseline includes buffers the fuzz traffic needs), with its own inputs.
    async def warm_fuzz(watch: Watch) -> None:
        await attack(watch)

    watch = await run_with_watch(gw, warm_fuzz, good=good, warmup=warmup)
    watch.extra["seed"] = seed
    return watch


async def crash_regression(gw: Gateway, total: int = 1000, concurrency: int = 10) -> dict[str, Any]:
    """Send ``CRASH_REQUEST`` ``total`` times over new connections, ``concurrency`` at a time.

    Returns counts: "answered" (a 400 status line with ``connection: close``
    followed by the server closing), the other outcomes by name, and whether
    the process is alive at the end. Stops early once the process is gone.
    """
    outcomes: Counter = Counter()
    examples: dict[str, str] = {}
    counter = iter(range(total))

    async def sender() -> None:
        for _ in counter:
            if not gw.alive():
                outcomes["not sent: the gateway is gone"] += 1
                continue
            a = await exchange(gw.port, Case("crash", [CRASH_REQUEST]), wait=10.0)
            head = a.head().lower()
            status_ok = a.data.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 "))
            if status_ok and b"\r\nconnection: close" in head and a.eof:
                kind = "answered"
            elif a.refused:
                kind = "refused"
            elif not a.data:
                kind = "reset before an answer" if a.reset else "closed without an answer" if a.eof else "no answer"
            else:
                kind = "answer not 400 + connection: close + closed"
            outcomes[kind] += 1
            examples.setdefault(kind, repr(a.data[:300]) + (" then reset" if a.reset else ""))

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(sender)
    return {
        "outcomes": dict(outcomes),
        "examples": examples,
        "alive": gw.alive(),
        "exit_code": None if gw.alive() else gw.proc.returncode if gw.proc else None,
    }


# ---------------------------------------------------------------------------------------------
# HTTP/2 attacks over TLS


@dataclass
class H2Outcome:
    """What one attack did and what the server did back."""

    name: str
    connections: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    goaway: list[str] = field(default_factory=list)  # error code names, one per GOAWAY received
    closed_by_server: int = 0  # connections the server ended (EOF, reset) before we were done
    rst_received: int = 0
    responses: Counter = field(default_factory=Counter)  # :status of each response HEADERS
    status_of: dict[int, str] = field(default_factory=dict)  # stream id -> :status (the last connection's)
    seconds: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.name}: {self.connections} connection(s), {self.frames_sent} frames / "
            f"{self.bytes_sent / 2**20:.1f} MiB sent in {self.seconds:.1f} s; server: "
            f"GOAWAY {self.goaway or 'none'}, closed {self.closed_by_server} connection(s) early, "
            f"{self.rst_received} RST_STREAM, responses {dict(self.responses) or 'none'}"
        )


class H2Conn:
    """A raw HTTP/2 client connection over TLS (ALPN h2): frames out, frames read in the background."""

    def __init__(self, outcome: H2Outcome) -> None:
        self.outcome = outcome
        self.closed = False
        self.stream: trio.SSLStream | None = None
        self._sending = trio.Lock()  # the reader sends SETTINGS ACKs too

    async def open(self, port: int, nursery: trio.Nursery) -> None:
        from hyperframe.frame import SettingsFrame

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        self.stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="localhost")
        await self.stream.do_handshake()
        if self.stream.selected_alpn_protocol() != "h2":
            raise RuntimeError(f"ALPN chose {self.stream.selected_alpn_protocol()!r}, not h2")
        self.outcome.connections += 1
        await self.send([PREFACE, SettingsFrame(0).serialize()], frames=1)
        nursery.start_soon(self._read)

    async def send(self, data: list[bytes], frames: int) -> bool:
        """Send; False once the server has closed (nothing is raised)."""
        if self.closed or self.stream is None:
            return False
        blob = b"".join(data)
        try:
            async with self._sending:
                await self.stream.send_all(blob)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._server_closed()
            return False
        self.outcome.frames_sent += frames
        self.outcome.bytes_sent += len(blob)
        return True

    def _server_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.outcome.closed_by_server += 1

    async def _read(self) -> None:
        import hpack
        from h2.errors import ErrorCodes
        from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

        assert self.stream is not None
        decoder, buf = hpack.Decoder(), bytearray()
        try:
            while not self.closed:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 9:
                    frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                    if len(buf) < 9 + length:
                        break
                    frame.parse_body(memoryview(bytes(buf[9 : 9 + length])))
                    del buf[: 9 + length]
                    if isinstance(frame, GoAwayFrame):
                        try:
                            self.outcome.goaway.append(ErrorCodes(frame.error_code).name)
                        except ValueError:
                            self.outcome.goaway.append(str(frame.error_code))
                    elif isinstance(frame, RstStreamFrame):
                        self.outcome.rst_received += 1
                    elif isinstance(frame, HeadersFrame):
                        try:
                            status = dict(decoder.decode(frame.data)).get(":status", "?")
                        except Exception:  # the response headers are only for the report
                            status = "undecodable"
                        self.outcome.responses[str(status)] += 1
                        self.outcome.status_of[frame.stream_id] = str(status)
                    elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                        await self.send([SettingsFrame(0, flags=["ACK"]).serialize()], frames=1)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            pass
        self._server_closed()

    async def aclose(self) -> None:
        self.closed = True
        if self.stream is not None:
            with trio.move_on_after(2):
                await self.stream.aclose()


def request_block(path: str = "/h2attack", extra: list[tuple[str, str]] | None = None, method: str = "GET") -> bytes:
    """An HPACK block for ``method`` ``path`` from a fresh encoder (it refers to no earlier block)."""
    import hpack

    return hpack.Encoder().encode(
        [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path), *(extra or [])]
    )


async def rapid_reset(
    port: int, out: H2Outcome, deadline: float, *, per_connection: int = 5000, connections: int = 3
) -> None:
    """CVE-2023-44487: HEADERS (a complete GET) then RST_STREAM(CANCEL) at once, in batches of 100."""
    from hyperframe.frame import HeadersFrame, RstStreamFrame

    block = request_block()
    for _ in range(connections):
        if trio.current_time() >= deadline:
            break
        async with trio.open_nursery() as nursery:
            conn = H2Conn(out)
            await conn.open(port, nursery)
            sid = 1
            while sid < 2 * per_connection and trio.current_time() < deadline:
                batch = []
                for _ in range(100):
                    batch.append(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
                    batch.append(RstStreamFrame(sid, error_code=8).serialize())
                    sid += 2
                if not await conn.send(batch, frames=200):
                    break
            await trio.sleep(0.5)  # let the server answer (or not) before we go
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def continuation_flood(port: int, out: H2Outcome, deadline: float, *, max_bytes: int = 32 * 2**20) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB, never ending the block."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    # A literal header whose value length announces 1 GiB, then the value bytes, forever.
    start = request_block() + b"\x00\x01x" + b"\x7f" + _hpack_int_tail(2**30 - 127)
    async with trio.open_nursery() as nursery:
        conn = H2Conn(out)
        await conn.open(port, nursery)
        ok = await conn.send([HeadersFrame(1, data=start, flags=["END_STREAM"]).serialize()], frames=1)
        frame = ContinuationFrame(1, data=b"a" * 16384).serialize()
        while ok and out.bytes_sent < max_bytes and trio.current_time() < deadline:
            ok = await conn.send([frame] * 16, frames=16)
        await trio.sleep(0.5)
        await conn.aclose()
        nursery.cancel_scope.cancel()


def _hpack_int_tail(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


async def settings_flood(port: int, out: H2Outcome, deadline: float, *, count: int = 20000) -> None:
    """Thousands of SETTINGS frames (each asks for an ACK), in batches of 500."""
    from hyperframe.frame import SettingsFrame

    frame = SettingsFrame(
        0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535, SettingsFrame.MAX_CONCURRENT_STREAMS: 100}
    ).serialize()
    async with trio.open_nursery() as nursery:
        conn = H2Conn(out)
        await conn.open(port, nursery)
        sent = 0
        while sent < count and trio.current_time() < deadline and await conn.send([frame] * 500, frames=500):
            sent += 500
        await trio.sleep(0.5)
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def huge_headers(port: int, out: H2Outcome, deadline: float, *, size: int = 1 << 20) -> None:
    """One GET whose header list is ``size`` bytes (64 headers), far beyond max_header_size,
    in HEADERS + CONTINUATION frames; then a normal GET on the same connection."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    value = "v" * (size // 64)
    block = request_block(extra=[(f"x-huge-{i}", value) for i in range(64)])
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [HeadersFrame(1, data=pieces[0], flags=["END_STREAM"]).serialize()]
    frames += [
        ContinuationFrame(1, data=p, flags=["END_HEADERS"] if i == len(pieces) - 2 else []).serialize()
        for i, p in enumerate(pieces[1:])
    ]
    async with trio.open_nursery() as nursery:
        conn = H2Conn(out)
        await conn.open(port, nursery)
        if await conn.send(frames, frames=len(frames)):
            await conn.send(
                [HeadersFrame(3, data=request_block(), flags=["END_HEADERS", "END_STREAM"]).serialize()], frames=1
            )
        await trio.sleep(min(1.0, max(0.0, deadline - trio.current_time())))
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def hpack_bomb(port: int, out: H2Outcome, deadline: float, *, references: int = 64 * 1024) -> None:
    """One 4 KB header indexed in the dynamic table by a first request, then a request
    that references it ``references`` times (1 byte each: a 256 MiB header list)."""
    import hpack
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    enc = hpack.Encoder()
    first = enc.encode(
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/h2bomb"),
            ("x-bomb", "b" * 4000),
        ]
    )  # x-bomb last: it is dynamic index 62
    refs = b"\xbe" * references  # indexed header field, index 62
    block = b"\x82\x87\x04\x08/h2bomb2\x01\x09localhost" + refs  # GET, https, :path, :authority, then the refs
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    frames = [
        HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize(),
        HeadersFrame(
            3, data=pieces[0], flags=["END_STREAM"] + (["END_HEADERS"] if len(pieces) == 1 else [])
        ).serialize(),
    ]
    frames += [
        ContinuationFrame(3, data=p, flags=["END_HEADERS"] if i == len(pieces) - 2 else []).serialize()
        for i, p in enumerate(pieces[1:])
    ]
    async with trio.open_nursery() as nursery:
        conn = H2Conn(out)
        await conn.open(port, nursery)
        await conn.send(frames, frames=len(frames))
        await trio.sleep(min(1.0, max(0.0, deadline - trio.current_time())))
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def no_attack(port: int, out: H2Outcome, deadline: float) -> None:
    """The control: nothing but the well-behaved clients, for as long as an attack may last."""
    await trio.sleep_until(deadline)


Attack = Callable[[int, H2Outcome, float], Awaitable[None]]
ATTACKS: dict[str, Attack] = {
    "rapid-reset": rapid_reset,
    "continuation-flood": continuation_flood,
    "settings-flood": settings_flood,
    "huge-headers": huge_headers,
    "hpack-bomb": hpack_bomb,
    "none": no_attack,
}


async def h2_attack(gw: Gateway, name: str, *, seconds: float = 10.0, warmup: float = 2.0) -> tuple[Watch, H2Outcome]:
    """Run attack ``name`` for at most ``seconds`` while HTTP/1.1 and HTTP/2 clients check their answers.

    RSS is sampled every 0.1 s during the attack; ``Watch.rss_peak_kib`` is
    the highest sample.
    """
    outcome = H2Outcome(name)

    async def attack(watch: Watch) -> None:
        t0 = trio.current_time()
        done = trio.Event()

        async def sample() -> None:
            while not done.is_set():
                if gw.alive():
                    watch.rss_peak_kib = max(watch.rss_peak_kib, gw.rss_kib())
                with trio.move_on_after(0.1):
                    await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            with trio.move_on_after(seconds + 5):  # a hang guard; each attack bounds itself by the deadline
                await ATTACKS[name](gw.port, outcome, t0 + seconds)
            done.set()
        outcome.seconds = trio.current_time() - t0

    watch = await run_with_watch(gw, attack, good=2, good_h2=2, warmup=warmup)
    return watch, outcome


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


if __name__ == "__main__":
    if sys.argv[1:] == ["upstream"]:
        _serve_upstream()
    else:
        sys.exit("usage: edgefuzz.py upstream   (the echo upstream; bench/fuzz.py runs the fuzzers)")
