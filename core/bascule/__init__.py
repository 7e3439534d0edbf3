"""Bascule: a plugin-based API gateway on trio and hypercorn."""

from .config import Config, ConfigError, load_config, parse_config
from .gateway import Gateway
from .registry import discover
from .runtime import Runtime, compile_runtime

__all__ = ["Config", "ConfigError", "Gateway", "Runtime", "compile_runtime", "discover", "load_config", "parse_config"]
__version__ = "0.1.0"
