"""The example plugin: adds a configured header to every response of its routes."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import Context, HeaderName, HeaderValue, Plugin, Response, hookimpl, setting


@dataclass(frozen=True)
class ExampleSettings:
    """``[routes.plugins.example]`` (or ``[plugins.example]`` for every route).

    A rule of one value is declared on its field: by its type (HeaderName,
    HeaderValue, Duration...) or its bounds (min=, max=, pattern=); the gateway
    enforces it and ``bascule schema`` states it. A rule that spans several
    fields goes in ``__post_init__`` (raise ``ValueError("key: ...")``).
    """

    header: HeaderName = setting("x-example", "Name of the response header to add.")
    value: HeaderValue = setting("hello", "Its value.")


class ExamplePlugin(Plugin[ExampleSettings]):  # Plugin[...]: self.settings is typed
    """Adds ``header: value`` to every response of the routes it is enabled on."""

    name = "example"
    priority = 50  # conventions: auth 1000, rate limiting 900, cache 100, transformers 50
    Settings = ExampleSettings

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        response.headers.set(self.settings.header, self.settings.value)
