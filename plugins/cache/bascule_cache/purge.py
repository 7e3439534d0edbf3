"""The admin purge endpoint: drop stored responses by URI, path prefix or all of them."""

from __future__ import annotations

import json

from bascule_sdk import HTTPError, Request, Response

from .storage import Store, StoreUnavailable

__all__ = ["purge"]


async def purge(request: Request, stores: list[Store]) -> Response:
    """Answer ``POST`` with ``{"key": URL}``, ``{"prefix": "/path"}`` or ``{"all": true}``:
    ``{"purged": n}``, the records dropped from ``stores``; 400/405 for a bad request,
    503 when a store is unavailable."""
    if request.method != "POST":
        raise HTTPError(405, "Use POST.", {"allow": "POST"})
    try:
        data = json.loads(await request.read(None) or b"null")
    except (ValueError, TypeError):
        raise HTTPError(400, "The body must be JSON.") from None
    if (
        not isinstance(data, dict)
        or len(data) != 1
        or not (isinstance(data.get("key"), str) or isinstance(data.get("prefix"), str) or data.get("all") is True)
    ):
        raise HTTPError(400, 'Send one of {"key": "http://host/path?query"}, {"prefix": "/path"} or {"all": true}.')
    purged = 0
    try:
        for store in stores:
            if "key" in data:
                purged += await store.delete([data["key"]])
            elif "prefix" in data:
                purged += await store.purge_prefix(data["prefix"])
            else:
                purged += await store.clear()
    except StoreUnavailable:
        raise HTTPError(503, "The cache store is unavailable.") from None
    return Response.json({"purged": purged})
