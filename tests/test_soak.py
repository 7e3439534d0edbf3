"""The soak script in its shortened form: mixed traffic through the default config.

The soak starts its own demo services and gateway on free ports, so it runs
beside ``make run``; it refuses to measure a gateway it did not start.
"""

import importlib.util
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_soak():
    spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_soak_loses_no_request_and_memory_stays_bounded(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "15", "--concurrency", "8", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    soak = json.loads(out.read_text())
    assert soak["problems"] == [], soak["problems"]
    assert soak["requests"] > 100 and soak["failures"] == 0
    # Every request reached the gateway the soak started: its own counter agrees.
    assert soak["gateway_requests_counted"] == soak["requests"]
    # A leak of even a few hundred bytes per request would show here; warm-up (caches,
    # buckets, imports) is excluded.
    assert all(rss > 0 for _, rss in soak["samples"])
    growth_kib = soak["rss_kib_last"] - soak["rss_kib_after_warmup"]
    assert growth_kib < 32 * 1024, soak


def test_the_soak_refuses_an_admin_port_answered_by_another_process():
    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "pid": 1}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    soak = load_soak()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(
            RuntimeError, match=f"answered by pid 1, not by the gateway this soak started \\(pid {ours.pid}\\)"
        ):
            soak.wait_for_own_gateway(f"http://127.0.0.1:{server.server_port}", ours, timeout=30)
    finally:
        ours.kill()
        ours.wait()
        server.shutdown()
        server.server_close()


def test_the_soak_config_moves_every_demo_port():
    soak = load_soak()
    ports = {9101: 40001, 9102: 40002, 9103: 40003, 9104: 40004, 9105: 40005}
    config = soak.demo_config(ports, 40010, 40011)
    assert 'listen = "127.0.0.1:40010"' in config and 'admin = "127.0.0.1:40011"' in config
    for demo, moved in ports.items():
        assert f"127.0.0.1:{demo}/" not in config
        assert f'"http://127.0.0.1:{moved}/' in config
