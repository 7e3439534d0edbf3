"""The example plugin: adds a configured header to every response of its routes."""

from __future__ import annotations

from dataclasses import dataclass

from bascule_sdk import TOKEN, Context, Plugin, Response, hookimpl, setting

_FIELD_NAME = rf"^{TOKEN}$"  # RFC 9110 field-name


@dataclass(frozen=True)
class ExampleSettings:
    """``[routes.plugins.example]`` (or ``[plugins.example]`` for every route).

    A rule of one value is declared on its field (min=, max=, pattern=): the
    gateway enforces it and ``bascule schema`` states it. A rule that spans
    several fields goes in ``__post_init__`` (raise ``ValueError("key: ...")``).
    """

    header: str = setting(
        "x-example", "Name of the response header to add.", pattern=_FIELD_NAME, expected="a header name"
    )
    value: str = setting("hello", "Its value.", pattern=r"^[^\r\n\x00]*$", expected="no CR, LF or NUL")


class ExamplePlugin(Plugin[ExampleSettings]):  # Plugin[...]: self.settings is typed
    """Adds ``header: value`` to every response of the routes it is enabled on."""

    name = "example"
    priority = 50  # conventions: auth 1000, rate limiting 900, cache 100, transformers 50
    Settings = ExampleSettings

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        response.headers.set(self.settings.header, self.settings.value)
