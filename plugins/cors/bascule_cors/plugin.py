"""The cors plugin: CORS per the Fetch standard (https://fetch.spec.whatwg.org/#http-cors-protocol).

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  is answered at the gateway and never reaches the service: 204 with the
  ``Access-Control-Allow-*`` headers when the origin, the method and every
  requested header are allowed, else 403 problem+json saying which is not.
- Any other response to an allowed origin gets ``Access-Control-Allow-Origin``
  (and ``-Credentials``, ``-Expose-Headers`` as configured). The service's own
  ``Access-Control-*`` headers are dropped: on a route with this plugin the
  gateway alone speaks CORS, so a browser never sees two conflicting answers.
- ``Vary: Origin`` is added whenever the answer depends on the request's
  origin, so caches keep one answer per origin.

Priority 2000: above authentication, because browsers send preflights without
credentials; and since ``on_response`` unwinds lowest priority first, CORS
headers are added last, also to a 401 or 429 answered by another plugin
(a page can then read why its call failed).
"""

from __future__ import annotations

from bascule_sdk import Context, Headers, HTTPError, Plugin, Response, hookimpl

from .settings import CORSSettings

__all__ = ["CORS"]


class CORS(Plugin[CORSSettings]):
    """Answers CORS preflights and adds CORS headers to responses."""

    name = "cors"
    priority = 2000
    Settings = CORSSettings

    @hookimpl
    async def on_request(self, ctx: Context) -> Response | None:
        request = ctx.request
        origin = request.headers.get("origin")
        requested = request.headers.get("access-control-request-method")
        if request.method != "OPTIONS" or origin is None or requested is None:
            return None  # not a preflight: an ordinary request goes on
        s = self.settings
        vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        ctx.state[self.instance] = ctx.tags["cors"] = "refused"  # until every check passed
        if not s.allows_origin(origin):
            raise HTTPError(403, f"Origin {origin} is not allowed to call this route.", {"vary": vary})
        if not s.allows_method(requested):
            raise HTTPError(403, f"Method {requested} is not allowed cross-origin.", {"vary": vary})
        names = _field_names(request.headers.get_all("access-control-request-headers"))
        refused = [n for n in names if not s.allows_header(n)]
        if refused:
            raise HTTPError(403, f"Request header(s) not allowed cross-origin: {', '.join(refused)}.", {"vary": vary})
        headers = Headers()
        headers.set("access-control-allow-methods", requested)
        if names:
            headers.set("access-control-allow-headers", ", ".join(names))
        if s.max_age is not None:
            headers.set("access-control-max-age", str(int(s.max_age)))
        headers.set("vary", vary)
        headers.set("content-length", "0")
        ctx.state[self.instance] = ctx.tags["cors"] = "preflight"
        return Response(204, headers)

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        s = self.settings
        headers = response.headers
        preflight = ctx.state.get(self.instance)
        if preflight == "refused":
            return  # a refused preflight carries no Access-Control-Allow-* at all
        if not preflight:
            headers.remove(*(name for name, _ in headers if name.startswith("access-control-")))
        origin = ctx.request.headers.get("origin")
        if not (s.any_origin and not s.credentials):
            _vary(headers, "Origin")  # the answer differs by origin
        if origin is None or not s.allows_origin(origin):
            return
        headers.set("access-control-allow-origin", "*" if s.any_origin and not s.credentials else origin)
        if s.credentials:
            headers.set("access-control-allow-credentials", "true")
        if s.expose_headers and not preflight:
            headers.set("access-control-expose-headers", ", ".join(s.expose_headers))


def _field_names(values: list[str]) -> list[str]:
    """The header names of ``Access-Control-Request-Headers``, lower-case, in order."""
    return [n for v in values for part in v.split(",") if (n := part.strip().lower())]


def _vary(headers: Headers, name: str) -> None:
    """Add ``name`` to ``Vary`` unless it is there already (or ``Vary: *``)."""
    present = [t.strip().lower() for v in headers.get_all("vary") for t in v.split(",")]
    if name.lower() in present or "*" in present:
        return
    headers.set("vary", ", ".join([v for v in headers.get_all("vary") if v.strip()] + [name]))
