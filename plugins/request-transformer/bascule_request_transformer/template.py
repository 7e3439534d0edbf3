"""Value templates: ``"/v2/users/{id}"`` with ``{name}`` replaced per request.

Only ``{identifier}`` is a placeholder; any other brace is literal text (so a
JSON-looking header value needs no escaping). The names are the route's path
parameters plus ``rest``, ``consumer``, ``client_ip`` and ``request_id`` (see
``values``); a path parameter of the same name wins over those.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bascule_sdk import Context

__all__ = ["BUILTINS", "MissingName", "Template", "values"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
BUILTINS = ("rest", "consumer", "client_ip", "request_id")


class MissingName(KeyError):
    """A template names something the request does not have (a config mistake)."""


@dataclass(frozen=True)
class Template:
    """A parsed template: literal parts and names, alternating (``parts[0]`` literal)."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        return cls(text, tuple(_PLACEHOLDER.split(text)))

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder replaced; ``MissingName`` if one has no value."""
        if len(self.parts) == 1:
            return self.text
        out = []
        for i, part in enumerate(self.parts):
            if i % 2 == 0:
                out.append(part)
            elif part in values:
                out.append(values[part])
            else:
                raise MissingName(part)
        return "".join(out)


def values(ctx: Context, path: str) -> dict[str, str]:
    """What templates may use for this request; ``path`` is the path being sent upstream.

    ``rest`` is the part of the client's path below the route's matched prefix
    (``""`` or ``"/..."``). Path parameters are percent-encoded, as on the wire.
    """
    client_path = ctx.request.path
    rest = client_path[len(ctx.matched_path) :] if client_path.startswith(ctx.matched_path) else path
    found = {
        "rest": rest,
        "consumer": ctx.consumer.name if ctx.consumer else "",
        "client_ip": ctx.client_ip,
        "request_id": ctx.request_id,
    }
    found.update(ctx.path_params)
    return found
