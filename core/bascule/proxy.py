"""The default ``handle``: proxy the request to the route's service.

Registered on every route that names a service, as an ordinary plugin with the
lowest priority, so the core runs on its own contract: a plugin that handles a
route (aggregation, mocks) simply answers first.
"""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Context, Plugin, Request, Response, hookimpl, setting

from .headers import outbound_copy

__all__ = ["Proxy", "upstream_request"]


@dataclass(frozen=True)
class ProxySettings:
    strip_path: bool = setting(False, "Remove the matched path prefix before forwarding.")
    preserve_host: bool = setting(False, "Send the client's Host upstream.")


class Proxy(Plugin[ProxySettings]):
    """Forwards the client's request, body streaming, to the route's service."""

    name = "_proxy"
    priority = -(2**31)
    Settings = ProxySettings

    @hookimpl
    async def handle(self, ctx: Context) -> Response:
        return await ctx.forward(upstream_request(ctx, self.settings.strip_path, self.settings.preserve_host))


def upstream_request(ctx: Context, strip_path: bool, preserve_host: bool) -> Request:
    """The client's request as the route sends it on (a copy): the matched prefix
    removed with ``strip_path``, its Host kept only with ``preserve_host``."""
    client = ctx.request
    path = client.path
    if strip_path:
        path = path[len(ctx.matched_path) :]  # "" or "/...": the match is segment-aligned
    return Request(client.method, path, client.query, outbound_copy(client.headers, preserve_host), client.body)
