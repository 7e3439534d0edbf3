"""Serving: TLS with HTTP/2, the CLI on the default config, entry-point discovery."""

import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
from bascule.registry import discover
from bascule.testing import RunningGateway, self_signed_cert, start_gateway, start_upstream

ROOT = Path(__file__).resolve().parent.parent


async def tls_gateway(nursery, tmp_path: Path, upstream_url: str) -> tuple[RunningGateway, ssl.SSLContext]:
    """A gateway serving TLS (so HTTP/2 by ALPN) on a self-signed certificate for
    localhost, proxying everything to ``upstream_url``; and a context trusting it."""
    cert, key = self_signed_cert(tmp_path)
    gw = await start_gateway(
        nursery,
        f"""
        [gateway]
        tls_cert = "{cert}"
        tls_key = "{key}"
        [services.api]
        targets = ["{upstream_url}"]
        [[routes]]
        name = "api"
        paths = ["/"]
        service = "api"
    """,
    )
    return gw, ssl.create_default_context(cafile=str(cert))


async def test_tls_with_http2_when_the_client_offers_it(nursery, tmp_path):
    upstream = await start_upstream(nursery)
    gw, trust = await tls_gateway(nursery, tmp_path, upstream.url)
    assert gw.url.startswith("https://")
    async with httpx.AsyncClient(verify=trust, http2=True) as h2, httpx.AsyncClient(verify=trust) as h1:
        url = gw.url.replace("127.0.0.1", "localhost") + "/hello?x=1"
        r2 = await h2.post(url, content=b"over h2")
        r1 = await h1.get(url)
    assert (r2.http_version, r2.status_code) == ("HTTP/2", 200)
    assert r2.json() == {"method": "POST", "path": "/hello", "query": "x=1", "body": "over h2"}
    assert r1.http_version == "HTTP/1.1"
    assert upstream.requests[0].header("x-forwarded-proto") == "https"


async def test_an_http2_body_without_content_length_reaches_the_upstream(nursery, tmp_path):
    # HTTP/2 frames a body by END_STREAM (RFC 9113 8.1): no Content-Length is needed.
    upstream = await start_upstream(nursery)
    gw, trust = await tls_gateway(nursery, tmp_path, upstream.url)

    async def chunks():
        yield b"streamed "
        yield b"over h2"

    async with httpx.AsyncClient(verify=trust, http2=True, http1=False) as h2:
        r = await h2.post(gw.url.replace("127.0.0.1", "localhost") + "/up", content=chunks())
    assert (r.http_version, r.status_code) == ("HTTP/2", 200)
    assert r.json()["body"] == "streamed over h2"


def bascule(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bascule.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_validate_routes_and_plugins_on_the_default_config():
    valid = bascule("validate", "plugins.toml")
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.startswith("plugins.toml: valid (")
    routes = bascule("routes", "-c", "plugins.toml")
    assert routes.returncode == 0, routes.stderr
    assert "users: GET /api/users [prefix] hosts=* -> users" in routes.stdout
    plugins = bascule("plugins")
    assert plugins.returncode == 0, plugins.stderr


def test_cli_validate_reports_every_error_and_exits_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        textwrap.dedent("""
        [[routes]]
        name = "x"
        paths = ["/x"]
        service = "nowhere"
        [routes.plugins.no-such-plugin]
    """)
    )
    result = bascule("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}: route \"x\": service: unknown service 'nowhere' (services: none)",
        f"{bad}: route \"x\": plugins.no-such-plugin: plugin 'no-such-plugin' is not installed; installed plugins: "
        + ", ".join(sorted(discover())),
    ]
    assert "Traceback" not in result.stderr


def test_a_plugin_distribution_is_found_through_its_entry_point(tmp_path):
    package = tmp_path / "src"
    (package / "bascule_hello").mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "bascule-hello"
        version = "1.2.3"
        [project.entry-points."bascule.plugins"]
        hello = "bascule_hello:Hello"
        [tool.setuptools]
        packages = ["bascule_hello"]
    """)
    )
    (package / "bascule_hello" / "__init__.py").write_text(
        textwrap.dedent("""
        from bascule_sdk import Plugin, hookimpl

        class Hello(Plugin):
            name = "hello"

            @hookimpl
            async def on_response(self, response):
                response.headers.set("x-hello", "world")
    """)
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package),
        ],
        check=True,
        timeout=120,
    )
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from bascule.registry import discover
        hello = discover()["hello"]
        print(hello.distribution, hello.version, hello.cls.__name__, ",".join(hello.hooks))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["bascule-hello", "1.2.3", "Hello", "on_response"]


def test_settle_heap_freezes_what_lives_and_frees_frozen_cycles_at_the_next_settle():
    """A serving process freezes its heap (the collector stops scanning it); after a reload the
    next settle must still free the old config's reference cycles, or each reload would leak."""
    import gc
    import weakref

    from bascule.server import GC_THRESHOLDS, settle_heap

    class Config:
        pass

    before = gc.get_threshold()
    try:
        old = Config()
        old.itself = old  # a cycle: only the cyclic collector frees it
        gone = weakref.ref(old)
        settle_heap()
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == GC_THRESHOLDS
        del old
        gc.collect()
        assert gone() is not None  # frozen: a collection does not see it
        settle_heap()  # what serve does once a reload closed the old config
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
