"""The admin listener's live dashboard (issue 21) and the JSON pages it reads.

The endpoints are tested over real sockets on a real ``bascule run`` process. The page
is opened in headless Chromium (Debian's ``chromium``; skipped where it is not
installed), driven over the DevTools protocol on ``--remote-debugging-pipe``: the test
opens the page, sends traffic while it is open, waits until the page shows it, then
reads the rendered DOM and every console message and uncaught exception. (Chromium's
``--dump-dom --virtual-time-budget`` cannot do this: under virtual time two polls of
the page are apart by no real time, so no traffic falls between them; Playwright would
be a 40 MB dependency for the same few commands.)

``BASCULE_DASHBOARD_SCREENSHOT=FILE.png`` makes the demo test save a screenshot of the
whole page (a few seconds of traffic; docs/dashboard.png was taken the same way, with
``DevTools.screenshot``, after 100 s of mixed traffic on the demo).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from bascule.dashboard import FILES

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "dashboard-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHROMIUM = os.environ.get("BASCULE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; or set BASCULE_CHROMIUM)"
)


def _demo_helpers() -> Any:
    """tests/test_demo.py: how the demo is started on free ports (tests run in importlib mode)."""
    spec = importlib.util.spec_from_file_location("bascule_test_demo", ROOT / "tests" / "test_demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _demo_helpers()


def until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` until it returns something true, and return that (the deadline
    only guards against a hang)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


# -- a real gateway process ------------------------------------------------------------------


def config(port: int, admin: int, upstream: str, *, routes: str = "api", extra: str = "") -> str:
    text = f"""
[gateway]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
admin_token = "{TOKEN}"
graceful_timeout = "2s"
{extra}
[services.api]
targets = ["{upstream}"]
"""
    for name in routes.split():
        text += f'\n[[routes]]\nname = "{name}"\npaths = ["/{name}"]\nservice = "api"\n'
    return text


@contextmanager
def running(tmp_path: Path, text: str, *args: str) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    """``bascule run`` on ``text`` (written to tmp_path/plugins.toml): its admin URL, the file, the process."""
    path = tmp_path / "plugins.toml"
    path.write_text(text)
    admin = "http://" + re.search(r'^admin = "(.*)"', text, re.M)[1]  # type: ignore[index]
    log = (tmp_path / "bascule.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bascule.cli", "run", "-c", str(path), *args], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        until(lambda: _status(admin + "/healthz") == 200 or proc.poll() is not None, "the gateway serving")
        assert proc.poll() is None, (tmp_path / "bascule.log").read_text()
        yield admin, path, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _status(url: str) -> int:
    try:
        return httpx.get(url, headers=AUTH, timeout=5).status_code
    except httpx.TransportError:
        return 0


def free_ports(n: int) -> list[int]:
    return [demo.free_port() for _ in range(n)]


@pytest.fixture
def upstream() -> Iterator[str]:
    """A real HTTP service in its own process (the gateway runs in another)."""
    (port,) = free_ports(1)
    code = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('content-length', '2'); self.end_headers(); "
        "self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _status(url) == 200, "the upstream serving", timeout=20)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- /config/status --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_config_status_reports_the_file_in_force_and_each_reload(tmp_path, upstream, workers):
    port, admin_port = free_ports(2)
    text = config(port, admin_port, upstream)
    with running(tmp_path, text, "--workers", str(workers)) as (admin, path, proc):
        first = until(
            lambda: len((s := httpx.get(admin + "/config/status", headers=AUTH).json())["workers"]) == workers and s,
            "every worker started",
        )
        anonymous = httpx.get(admin + "/config/status")

        path.write_text(config(port, admin_port, upstream, routes="api v2"))
        reload = httpx.post(admin + "/reload", headers=AUTH)
        assert reload.status_code == (200 if workers == 1 else 202)
        second = until(
            lambda: (
                (s := httpx.get(admin + "/config/status", headers=AUTH).json())["last_reload"]
                and all(w["last_reload"] for w in s["workers"])
                and s
            ),
            "the reload recorded by every worker",
        )
        path.write_text(config(port, admin_port, upstream, routes="api v3").replace("graceful_timeout", "graceful"))
        rejected = httpx.post(admin + "/reload", headers=AUTH)
        third = httpx.get(admin + "/config/status", headers=AUTH).json()

        path.write_text(config(port, admin_port, upstream, routes="api v4").replace("graceful_timeout", "gracefu"))
        proc.send_signal(signal.SIGHUP)  # each worker reloads (and rejects) on its own
        fourth = until(
            lambda: (
                (s := httpx.get(admin + "/config/status", headers=AUTH).json())["last_reload"]["trigger"] == "SIGHUP"
                and s
            ),
            "the SIGHUP reload recorded",
        )
        served = httpx.get(f"http://127.0.0.1:{port}/v2").status_code

    assert anonymous.status_code == 401  # behind the admin token like every JSON page
    assert first["sha256"] == hashlib.sha256(text.encode()).hexdigest()  # what sha256sum prints
    assert first["path"] == str(path) and first["version"] == "0.1.0"
    assert (first["routes"], first["services"], first["last_reload"]) == (1, 1, None)
    assert len(first["workers"]) == workers and first["consistent"] is True
    assert {w["sha256"] for w in first["workers"]} == {first["sha256"]}
    assert first["pid"] in {w["pid"] for w in first["workers"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["loaded_at"])

    new_hash = hashlib.sha256(config(port, admin_port, upstream, routes="api v2").encode()).hexdigest()
    assert second["sha256"] == new_hash and second["routes"] == 2
    assert second["loaded_at"] > first["loaded_at"]
    trigger = "POST /reload" if workers == 1 else "SIGHUP"  # with workers: validated, then every worker reloads
    assert second["last_reload"] == {"at": second["loaded_at"], "trigger": trigger, "ok": True, "errors": []}
    assert {w["sha256"] for w in second["workers"]} == {new_hash} and second["consistent"] is True
    assert [w["pid"] for w in second["workers"]] == [w["pid"] for w in first["workers"]]

    assert rejected.status_code == 400
    assert third["sha256"] == new_hash and third["loaded_at"] == second["loaded_at"]  # the old config stays
    assert third["last_reload"]["ok"] is False and third["last_reload"]["trigger"] == "POST /reload"
    assert third["last_reload"]["errors"] == rejected.json()["errors"]
    assert "graceful: unknown key" in third["last_reload"]["errors"][0]

    assert fourth["sha256"] == new_hash and fourth["last_reload"]["ok"] is False
    assert "gracefu: unknown key" in fourth["last_reload"]["errors"][0]
    assert served == 200


@pytest.mark.slow
def test_config_status_shows_a_replaced_worker_that_serves_another_file(tmp_path, upstream):
    """A worker that died is replaced by one reading the file as it is now: the admin
    listener says the workers disagree until a reload brings them together again."""
    port, admin_port = free_ports(2)
    text = config(port, admin_port, upstream)
    with running(tmp_path, text, "--workers", "2") as (admin, path, _proc):

        def status() -> dict[str, Any]:
            return httpx.get(admin + "/config/status", headers=AUTH).json()

        before = until(lambda: (s := status()) and len(s["workers"]) == 2 and s, "both workers published")
        other = next(w["pid"] for w in before["workers"] if w["pid"] != before["pid"])
        changed = config(port, admin_port, upstream, routes="api v2")
        path.write_text(changed)  # not reloaded
        os.kill(other, signal.SIGKILL)
        split = until(
            lambda: (s := status()) and len(s["workers"]) == 2 and other not in {w["pid"] for w in s["workers"]} and s,
            "the replacement published",
        )
        os.kill(_proc.pid, signal.SIGHUP)
        together = until(lambda: (s := status()) and s["consistent"] and s, "every worker on the new file")
    old_hash, new_hash = (hashlib.sha256(t.encode()).hexdigest() for t in (text, changed))
    assert split["consistent"] is False and split["sha256"] == old_hash  # the admin worker's own
    assert {w["pid"]: w["sha256"] for w in split["workers"]}[before["pid"]] == old_hash
    assert sorted(w["sha256"] for w in split["workers"]) == sorted([old_hash, new_hash])
    assert {w["sha256"] for w in together["workers"]} == {new_hash} and together["sha256"] == new_hash


# -- /routes: effective settings, secrets masked ----------------------------------------------


def test_routes_show_each_plugin_s_effective_settings_with_secrets_masked(tmp_path, upstream, monkeypatch):
    port, admin_port = free_ports(2)
    secret = "an-hmac-secret-of-at-least-32-bytes-" + os.urandom(8).hex()
    redis_password = os.urandom(12).hex()
    monkeypatch.setenv("T_REDIS", f"redis://:{redis_password}@127.0.0.1:1/0")
    text = (
        config(port, admin_port, upstream)
        + f"""
[routes.plugins.jwt]
keys = [{{ secret = "{secret}", algorithms = ["HS256"] }}]
scopes = ["read"]
[routes.plugins.rate-limit]
limit = 7
window = "1s"
redis_url = "env:T_REDIS"
[routes.plugins.burst]
plugin = "rate-limit"
limit = 50
window = "1m"
priority = 905
"""
    )
    text = text.replace("[services.api]", '[plugins.cors]\norigins = ["https://app.example"]\n\n[services.api]')
    with running(tmp_path, text) as (admin, _path, _proc):
        page = httpx.get(admin + "/routes", headers=AUTH)
    assert secret[:8] not in page.text and redis_password[:8] not in page.text
    (route,) = page.json()
    plugins = {p["instance"]: p for p in route["plugins"]}
    # In run order, each instance's priority deciding.
    assert [p["instance"] for p in route["plugins"]] == sorted(plugins, key=lambda i: -plugins[i]["priority"])
    assert plugins["jwt"]["settings"]["keys"] == [
        {"secret": "[secret]", "pem": None, "jwk": None, "algorithms": ["HS256"], "kid": None, "issuer": None}
    ]
    assert plugins["jwt"]["settings"]["scopes"] == ["read"] and plugins["jwt"]["global"] is False
    limit = plugins["rate-limit"]["settings"]
    assert (limit["limit"], limit["window"], limit["redis_url"]) == (7, 1.0, "[secret]")
    burst = plugins["burst"]
    assert (burst["plugin"], burst["priority"], burst["settings"]["limit"], burst["settings"]["window"]) == (
        "rate-limit",
        905,
        50,
        60.0,
    )
    assert plugins["cors"]["global"] is True and plugins["cors"]["settings"]["origins"] == ["https://app.example"]


# -- the static files -------------------------------------------------------------------------


def test_the_dashboard_files_are_served_without_the_token_and_nothing_else_is(tmp_path, upstream):
    port, admin_port = free_ports(2)
    with running(tmp_path, config(port, admin_port, upstream)) as (admin, _path, _proc):
        pages = {path: httpx.get(admin + path) for path in FILES}
        slash = httpx.get(admin + "/dashboard/")
        head = httpx.head(admin + "/dashboard")
        post = httpx.post(admin + "/dashboard")
        other = httpx.get(admin + "/dashboard/../routes")
        unknown = httpx.get(admin + "/dashboard/secrets.json")
        public = httpx.get(f"http://127.0.0.1:{port}/dashboard")
    for path, r in pages.items():
        assert r.status_code == 200, path
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert pages["/dashboard"].headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/dashboard/dashboard.js" defer></script>' in pages["/dashboard"].text
    assert pages["/dashboard/uPlot.iife.min.js"].text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32)")
    assert "MIT License" in pages["/dashboard/uPlot.LICENSE"].text
    assert slash.text == pages["/dashboard"].text
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(pages["/dashboard"].content))
    assert post.status_code == 405
    # Everything else keeps needing the token; the public listener has no dashboard.
    assert other.status_code == unknown.status_code == 401
    assert public.status_code == 404


# -- the page in Chromium ---------------------------------------------------------------------


class DevTools:
    """Headless Chromium driven over the DevTools protocol on ``--remote-debugging-pipe``
    (messages are JSON, NUL-terminated, on the browser's fds 3 and 4)."""

    def __init__(self, user_data: Path, width: int = 1400, height: int = 1000) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the pipes become fds 3 and 4
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        assert CHROMIUM
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--user-data-dir={user_data}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            pass_fds=(3, 4),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=self.session)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], 60)
            assert ready, "Chromium did not answer within 60 s"
            chunk = os.read(self._from_browser, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.send(method, session=self.session, **params)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and errors the browser logged (a
        failed load, a Content-Security-Policy violation), as text."""
        found = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(p["exceptionDetails"])[:500])
            elif e.get("method") == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                found.append(f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path) -> None:
        """The whole page (not only the window) as PNG."""
        size = self.page("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.page("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@contextmanager
def chromium() -> Iterator[DevTools]:
    with tempfile.TemporaryDirectory(prefix="bascule-chromium-") as profile:
        browser = DevTools(Path(profile))
        try:
            yield browser
        finally:
            browser.close()


#: What the page shows, read from its DOM.
READ_DOM = """(() => {
  const text = (el) => el ? el.textContent.trim() : null;
  const rows = (sel) => [...document.querySelectorAll(sel)];
  return {
    polls: Number(document.body?.dataset.polls || 0),
    live: text(document.getElementById("live")),
    trafficNote: text(document.getElementById("traffic-note")),
    trafficShown: getComputedStyle(document.getElementById("route-traffic")).display !== "none",
    config: Object.fromEntries(rows("#config dd[data-key]").map((d) => [d.dataset.key, [text(d), d.title]])),
    routes: Object.fromEntries(rows("#routes tbody tr").map((tr) => [tr.dataset.route, {
      cells: [...tr.children].slice(0, 5).map(text),
      pipeline: [...tr.querySelectorAll("details.plugin")].map((d) => d.dataset.instance),
      settings: Object.fromEntries([...tr.querySelectorAll("details.plugin")].map(
        (d) => [d.dataset.instance, d.querySelector("pre").textContent])),
    }])),
    traffic: Object.fromEntries(rows("#route-traffic tbody tr").map((tr) => [tr.dataset.route,
      Object.fromEntries(["rps", "total", "p50", "p95", "p99", "cache", "ratelimited", "legend"].map(
        (c) => [c, text(tr.querySelector("." + c))]))])),
    cards: Object.fromEntries(rows(".card").map((c) => [c.dataset.card, text(c.querySelector(".v"))])),
    charts: rows(".chart canvas").length,
    services: Object.fromEntries(rows(".service").map((s) => [s.dataset.service,
      rows.call(null, `.service[data-service="${s.dataset.service}"] tbody tr`).map((tr) => text(tr))])),
    plugins: Object.fromEntries(rows("#plugins tbody tr").map((tr) => [tr.dataset.plugin, text(tr.children[1])])),
    html: document.body.innerHTML,
  };
})()"""


def number(cell: str | None) -> float:
    """``"1.25 ms"`` -> 1.25; ``"—"`` (no figure) -> 0."""
    m = re.match(r"[\d.]+", cell or "")
    return float(m[0]) if m else 0.0


def _send(client: httpx.Client, path: str, counts: dict[str, dict[str, int]], route: str, **kw: Any) -> httpx.Response:
    r = client.get(path, **kw)
    cls = f"{r.status_code // 100}xx"
    counts.setdefault(route, {}).setdefault(cls, 0)
    counts[route][cls] += 1
    return r


@pytest.mark.slow
@needs_chromium
def test_the_demo_s_dashboard_shows_routes_pipelines_and_live_traffic_of_every_worker(tmp_path):
    config_path, admin_port, services = demo.demo_config(tmp_path)
    text = config_path.read_text()
    text = text.replace("[gateway]\n", f'[gateway]\nworkers = 2\nadmin_token = "{TOKEN}"\n', 1)
    config_path.write_text(text)
    public = "http://127.0.0.1:" + re.search(r'^listen = "127\.0\.0\.1:(\d+)"', text, re.M)[1]  # type: ignore[index]
    admin = f"http://127.0.0.1:{admin_port}"
    proc = demo.start(demo.demo_command(config_path), tmp_path / "demo.err")
    counts: dict[str, dict[str, int]] = {}
    cache = {"HIT": 0, "lookups": 0}
    limited = 0

    def traffic(client: httpx.Client, n: int) -> None:
        nonlocal limited
        for i in range(n):
            _send(client, f"/api/users/{i % 3 + 1}", counts, "users")
            _send(client, "/api/orders", counts, "orders")  # no token: 401
            r = _send(client, "/api/products/p1", counts, "products")
            if r.status_code == 429:
                limited += 1
            elif r.headers.get("x-cache-status"):
                cache["lookups"] += 1
                cache["HIT"] += r.headers["x-cache-status"] == "HIT"

    try:
        until(
            lambda: (
                _status(admin + "/healthz") == 200 and all(_status(f"http://127.0.0.1:{p}/") for p in services.values())
            ),
            "the demo serving",
        )
        # A new connection per request, so that both workers serve some.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=public, timeout=10, limits=fresh) as client, chromium() as browser:
            traffic(client, 20)
            # The token in the URL fragment: the page keeps it in sessionStorage and drops it from the URL.
            browser.page("Page.navigate", url=f"{admin}/dashboard#token={TOKEN}")
            until(lambda: browser.evaluate("Number(document.body?.dataset.polls || 0)") >= 1, "the first poll shown")
            traffic(client, 20)  # while the page is open: the next poll's rates are not zero
            until(
                lambda: number(browser.evaluate(READ_DOM)["traffic"].get("users", {}).get("rps")) > 0,
                "requests/s shown for the users route",
            )
            # Make every products request rate-limited to be sure rejections are shown (burst of 40).
            while limited == 0:
                traffic(client, 10)
            expected = {route: sum(c.values()) for route, c in counts.items()}
            shown = until(
                lambda: (
                    (d := browser.evaluate(READ_DOM))
                    and all(number(d["traffic"].get(r, {}).get("total")) == n for r, n in expected.items())
                    and d
                ),
                "the totals of every request sent",
            )
            url = browser.evaluate("location.href")
            stored = browser.evaluate("sessionStorage.getItem('bascule-admin-token')")
            if os.environ.get("BASCULE_DASHBOARD_SCREENSHOT"):
                browser.screenshot(Path(os.environ["BASCULE_DASHBOARD_SCREENSHOT"]))
            errors = browser.errors()
    finally:
        demo.stop(proc, signal.SIGTERM)

    assert errors == []
    assert url == f"{admin}/dashboard" and stored == TOKEN
    assert shown["live"].startswith("live")
    # Every route of the demo, with its matcher, service and pipeline in run order.
    assert set(shown["routes"]) == {
        "users", "products", "orders", "partner-orders", "rides", "ride-status", "ride-live", "catalogue-web",
        "users-v2",
    }  # fmt: skip
    assert shown["routes"]["orders"]["cells"] == ["orders", "/api/orders", "GET POST", "*", "orders"]
    assert shown["routes"]["orders"]["pipeline"] == ["prometheus", "jwt", "rate-limit", "logging"]
    assert shown["routes"]["products"]["pipeline"] == ["prometheus", "rate-limit", "cache", "logging"]
    assert shown["routes"]["partner-orders"]["pipeline"] == ["prometheus", "key-auth", "acl", "logging"]
    jwt_settings = json.loads(shown["routes"]["orders"]["settings"]["jwt"])
    assert jwt_settings["keys"][0]["secret"] == "[secret]" and jwt_settings["scopes"] == ["orders:read"]
    assert "bascule-demo-secret" not in shown["html"]
    # Traffic: the figures of both workers, summed.
    users = shown["traffic"]["users"]
    assert number(users["total"]) == expected["users"] and number(users["rps"]) > 0
    assert 0 < number(users["p50"]) <= number(users["p95"]) <= number(users["p99"])
    for route in ("users", "orders", "products"):  # the status mix: 404s for users 3, 401s for orders...
        legend = " · ".join(f"{c} {n}" for c, n in sorted(counts[route].items()))
        assert shown["traffic"][route]["legend"] == legend
    assert set(counts["users"]) == {"2xx", "4xx"}
    products = shown["traffic"]["products"]
    assert number(products["ratelimited"]) == limited > 0
    assert products["cache"] == f"{100 * cache['HIT'] / cache['lookups']:.0f} %"
    assert number(shown["cards"]["requests/s"]) > 0 and number(shown["cards"]["rate-limited"]) == limited
    assert shown["charts"] == 3
    assert "all workers" in shown["trafficNote"]
    # Services, the config in force and the plugins installed.
    assert shown["services"]["users"][0].startswith(f"http://127.0.0.1:{services[9101]}/users")
    assert "healthy" in shown["services"]["users"][0]
    assert shown["config"]["sha256"][1] == hashlib.sha256(text.encode()).hexdigest()
    assert shown["config"]["last reload"][0] == "none since start"
    assert shown["config"]["workers"][0] == "2"  # both on this config
    assert shown["plugins"]["jwt"] == shown["plugins"]["prometheus"] == "0.1.0"


#: Metrics as another version of the prometheus plugin may export them: a status ``code`` instead of
#: ``status_class``, labels the page does not use (summed over), escapes, comments, a timestamp.
METRICS = r"""# HELP bascule_requests_total Requests answered.
# TYPE bascule_requests_total counter
bascule_requests_total{route="api",code="200",method="GET"} 7.0
bascule_requests_total{method="POST",route="api",code="201"} 3
bascule_requests_total{route="api",code="503",method="GET"} 1 1700000000000
bascule_requests_total{route="we\"ird",status_class="4xx"} 2.0
bascule_request_duration_seconds_bucket{route="api",le="0.1",method="GET"} 4.0
bascule_request_duration_seconds_bucket{route="api",le="0.1",method="POST"} 1.0
bascule_request_duration_seconds_bucket{route="api",le="+Inf",method="GET"} 8.0
bascule_request_duration_seconds_bucket{route="api",le="+Inf",method="POST"} 3.0
bascule_request_duration_seconds_count{route="api"} 11.0
bascule_cache_total{route="api",result="hit",backend="memory"} 5.0
bascule_rate_limit_total{route="api",outcome="rejected",limit="per-second"} 2.0
bascule_rate_limit_total{route="api",outcome="rejected",limit="per-hour"} 1.0
not a metric line
# EOF
"""


@pytest.mark.slow
@needs_chromium
def test_without_prometheus_the_traffic_panel_says_so(tmp_path, upstream):
    port, admin_port = free_ports(2)
    with running(tmp_path, config(port, admin_port, upstream, routes="api v2")) as (admin, _path, _proc):
        with chromium() as browser:
            browser.page("Page.navigate", url=f"{admin}/dashboard")
            until(lambda: browser.evaluate("document.getElementById('login')?.hidden === false"), "the token form")
            browser.evaluate(
                f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                "document.getElementById('login').requestSubmit(); true"
            )
            shown = until(lambda: (d := browser.evaluate(READ_DOM))["polls"] >= 1 and d, "the first poll shown")
            errors = browser.errors()
            parsed = browser.evaluate(f"BasculeDashboard.sample({json.dumps(METRICS)})")
            quantiles = browser.evaluate(
                "[0.25, 0.7, 0.99, 1].map((q) => BasculeDashboard.quantile({0.1: 50, 0.5: 90, Infinity: 100}, q))"
            )
    assert [e for e in errors if "401" not in e] == []  # the first fetches, before the token, were refused
    assert "the prometheus plugin is not enabled" in shown["trafficNote"]
    assert shown["trafficShown"] is False and shown["charts"] == 0
    assert set(shown["routes"]) == {"api", "v2"} and shown["routes"]["api"]["pipeline"] == []
    assert shown["live"].startswith("live")
    # Summed over every label but route and status class (read from `code` or `status_class`).
    assert parsed["requests"] == {"api": {"2xx": 10, "5xx": 1}, 'we"ird': {"4xx": 2}}
    assert parsed["duration"] == {"api": {"0.1": 5, "Infinity": 11}}
    assert parsed["cache"] == {"api": {"hit": 5}} and parsed["rateLimit"] == {"api": {"rejected": 3}}
    # As Prometheus' histogram_quantile: linear within a bucket, the last finite bound beyond it.
    assert quantiles == [pytest.approx(0.05), pytest.approx(0.3), 0.5, 0.5]
