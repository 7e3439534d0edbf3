"""Bascule: a plugin-based API gateway on trio and hypercorn."""

from .config import Config, ConfigError, load_config, parse_config
from .gateway import Gateway, Runtime
from .registry import discover

__all__ = ["Config", "ConfigError", "Gateway", "Runtime", "discover", "load_config", "parse_config"]
__version__ = "0.1.0"
