"""bascule-example: a Bascule gateway plugin."""

from .plugin import ExamplePlugin, ExampleSettings

__all__ = ["ExamplePlugin", "ExampleSettings"]
