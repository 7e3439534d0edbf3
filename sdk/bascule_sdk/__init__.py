"""bascule-sdk: everything a Bascule plugin imports.

    from bascule_sdk import Plugin, hookimpl, HTTPError, Response

See ``hookspecs`` for the phases and ``settings`` for settings models.
"""

from .context import Consumer, Context, Gateway, Phase, RouteInfo, TaskState, UpstreamCall
from .hookspecs import hookimpl, hookspec
from .http import HOP_BY_HOP, TOKEN, Headers, HTTPError, Request, Response
from .plugin import NoSettings, Plugin
from .settings import ByteSize, Duration, HeaderName, HeaderValue, Secret, SettingsError, secret_bytes, setting
from .websocket import DROP, WebSocketClose, WebSocketMessage

__all__ = [
    "DROP",
    "HOP_BY_HOP",
    "TOKEN",
    "ByteSize",
    "Consumer",
    "Context",
    "Duration",
    "Gateway",
    "HTTPError",
    "HeaderName",
    "HeaderValue",
    "Headers",
    "NoSettings",
    "Phase",
    "Plugin",
    "Request",
    "Response",
    "RouteInfo",
    "Secret",
    "SettingsError",
    "TaskState",
    "UpstreamCall",
    "WebSocketClose",
    "WebSocketMessage",
    "hookimpl",
    "hookspec",
    "secret_bytes",
    "setting",
]
