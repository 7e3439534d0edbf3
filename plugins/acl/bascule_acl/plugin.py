"""The ``acl`` plugin: allow or deny a route by consumer group."""

from __future__ import annotations

from bascule_sdk import Context, HTTPError, Plugin, hookimpl

from .settings import Settings as ACLSettings

__all__ = ["ACLPlugin"]


class ACLPlugin(Plugin[ACLSettings]):
    """Admits the consumer an auth plugin identified, by its groups.

    Runs after authentication (priority 950 < 1000), so ``ctx.consumer`` is
    set by then. With no consumer at all (no auth plugin ran, or none
    identified the caller) the answer is 403, like any refusal: the ACL
    cannot tell the client how to authenticate.
    """

    name = "acl"
    priority = 950
    Settings = ACLSettings

    def __init__(self, settings: ACLSettings, *, instance: str | None = None) -> None:
        super().__init__(settings, instance=instance)
        self._allow = frozenset(settings.allow)
        self._deny = frozenset(settings.deny)

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        consumer = ctx.consumer
        if consumer is None:
            raise HTTPError(403, "This route requires an authenticated consumer.")
        if consumer.groups & self._deny or (self._allow and not consumer.groups & self._allow):
            ctx.tags["acl"] = "denied"
            raise HTTPError(403, "You are not allowed to use this route.")
