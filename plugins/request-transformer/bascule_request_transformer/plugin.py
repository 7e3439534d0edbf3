"""The request-transformer plugin: rewrite the request the gateway sends upstream.

Runs in ``on_upstream_request``: the client's request is left as it arrived
(other plugins and the logs see what the client sent); what changes is the
request to the service, after ``strip_path``. Header rules run before query
rules, then the path is rewritten. The gateway's own forwarding headers
(``X-Forwarded-*``, ``X-Request-ID``, hop-by-hop fields) are set after this
plugin, so rules cannot forge or drop them.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote_plus

from bascule_sdk import Context, Headers, HTTPError, Plugin, Request, hookimpl

from .settings import FieldRules, TransformerSettings
from .template import MissingName, Template, values

__all__ = ["RequestTransformer"]

log = logging.getLogger("bascule.request-transformer")

_QUERY_SAFE = "%/:@!$'()*,;~"  # kept as is in a rendered query value; & = + # are encoded


class RequestTransformer(Plugin[TransformerSettings]):
    """Adds, removes, renames and replaces headers and query parameters; rewrites the path."""

    name = "request-transformer"
    priority = 50
    Settings = TransformerSettings

    def __init__(self, settings: TransformerSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self._path = Template.parse(settings.path) if settings.path is not None else None
        self._templates = {**settings.headers.templates(), **settings.query.templates()}

    @hookimpl
    async def on_upstream_request(self, ctx: Context, request: Request) -> None:
        found = values(ctx, request.path)
        try:
            _headers(request.headers, self.settings.headers, self._templates, found)
            if not self.settings.query.empty:
                request.query = _query(request.query, self.settings.query, self._templates, found)
            if self._path is not None:
                request.path = self._path.render(found)
        except MissingName as e:
            log.error(
                "%s on route %r: a template names {%s}, which this route does not capture (path parameters: %s)",
                self.instance,
                ctx.route.name,
                e.args[0],
                ", ".join(ctx.path_params) or "none",
            )
            raise HTTPError(500, "The gateway's request rewrite for this route is misconfigured.") from None


def _headers(headers: Headers, rules: FieldRules, templates: dict[str, Template], found: dict[str, str]) -> None:
    if rules.remove:
        headers.remove(*rules.remove)
    for old, new in rules.rename.items():
        moved = headers.get_all(old)
        if moved:
            headers.remove(old, new)
            for value in moved:
                headers.add(new, value)
    for name, value in rules.replace.items():
        if name in headers:
            headers.set(name, templates[value].render(found))
    for name, value in rules.add.items():
        if name not in headers:
            headers.add(name, templates[value].render(found))


def _query(query: str, rules: FieldRules, templates: dict[str, Template], found: dict[str, str]) -> str:
    """Apply ``rules`` to a raw query string; untouched parameters keep their exact bytes."""
    pairs = [(unquote_plus(raw.partition("=")[0]), raw) for raw in query.split("&") if raw]
    if rules.remove:
        drop = set(rules.remove)
        pairs = [p for p in pairs if p[0] not in drop]
    for old, new in rules.rename.items():
        if any(name == old for name, _ in pairs):
            pairs = [
                (new, _pair(new, raw.partition("=")[2], "=" in raw)) if name == old else (name, raw)
                for name, raw in pairs
                if name != new
            ]
    for name, value in rules.replace.items():
        if any(n == name for n, _ in pairs):
            pairs = [p for p in pairs if p[0] != name]
            pairs.append((name, _pair(name, _encode(templates[value].render(found)))))
    for name, value in rules.add.items():
        if not any(n == name for n, _ in pairs):
            pairs.append((name, _pair(name, _encode(templates[value].render(found)))))
    return "&".join(raw for _, raw in pairs)


def _encode(value: str) -> str:
    return quote(value, safe=_QUERY_SAFE)


def _pair(name: str, raw_value: str, with_value: bool = True) -> str:
    key = quote(name, safe=_QUERY_SAFE)
    return f"{key}={raw_value}" if with_value else key
