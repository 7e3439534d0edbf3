"""The live dashboard of the admin listener: static files, served at ``/dashboard``.

    GET /dashboard          the page (static/index.html)
    GET /dashboard/NAME     its script, style sheet and vendored uPlot (static/)

The files ship inside the ``bascule`` wheel (package data); nothing is built
and nothing is fetched from elsewhere. They hold no data, so they are served
without the admin token: the page asks for the token once (or reads it from
the URL fragment, ``/dashboard#token=...``, which the browser never sends),
keeps it in ``sessionStorage`` and sends it as ``Authorization: Bearer`` on
its requests for ``/routes``, ``/upstreams``, ``/plugins``, ``/config/status``
and ``/metrics``, polled every 2 s. Everything it shows, a script can read
from those pages.

uPlot (MIT, static/vendor/uPlot.LICENSE) draws the plots.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from bascule_sdk import HTTPError, Response

__all__ = ["dashboard_page"]

#: Served name -> (file under static/, content type).
FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/dashboard/uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    "/dashboard/uPlot.LICENSE": ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
}

#: Only this listener's own files and JSON: no inline script, no other origin, no framing.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _read(name: str) -> bytes:
    return files(__package__).joinpath("static", name).read_bytes()


def dashboard_page(method: str, path: str) -> Response | None:
    """The response for ``path`` if it is one of the dashboard's files, else ``None``."""
    if path == "/dashboard/":
        path = "/dashboard"
    if path not in FILES:
        return None
    if method not in ("GET", "HEAD"):
        raise HTTPError(405, "Use GET.", {"allow": "GET, HEAD"})
    name, content_type = FILES[path]
    body = _read(name)
    headers = {
        "content-type": content_type,
        "content-length": str(len(body)),
        "cache-control": "no-cache",
        "content-security-policy": POLICY,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
    }
    return Response(200, headers, b"" if method == "HEAD" else body)
