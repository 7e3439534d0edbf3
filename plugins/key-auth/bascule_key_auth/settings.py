"""Settings of the ``key-auth`` plugin and its consumer credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bascule_sdk import ByteSize, setting

__all__ = ["Credentials", "Settings", "parse_hashed_key"]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: a valid header name
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class Settings:
    """``[routes.plugins.key-auth]``: where API keys are looked for, and what to do with them."""

    headers: list[str] = setting(["apikey", "X-API-Key"], "Request headers that may carry the key, in order.")
    query: list[str] = setting([], "Query parameters that may carry the key (off by default: URLs get logged).")
    hide_credentials: bool = setting(False, "Remove the key from the request before it is proxied.")
    anonymous: str = setting("", "Consumer name used when a request carries no key ('': 401).")
    max_key_size: ByteSize = setting(256, "Longer keys are rejected with 401 before hashing.")
    realm: str = setting("bascule", "realm of the WWW-Authenticate challenge.")
    scheme: str = setting(
        "", "Also read the key from 'Authorization: <scheme> <key>', e.g. Bearer ('': no scheme, APIKey challenge)."
    )

    def __post_init__(self) -> None:
        if not self.headers and not self.query and not self.scheme:
            raise ValueError("give at least one header or query parameter to read the key from")
        for name in self.headers:
            if not _TOKEN.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
        if self.scheme and not _TOKEN.match(self.scheme):
            raise ValueError(f"scheme: {self.scheme!r} is not a valid auth-scheme (an RFC 9110 token, e.g. Bearer)")
        if '"' in self.realm or "\\" in self.realm:
            raise ValueError("realm: must not contain quotes or backslashes")
        if self.max_key_size < 1:
            raise ValueError("max_key_size: must be at least 1 byte")


def parse_hashed_key(value: str) -> bytes:
    """``"sha256:<64 hex digits>"`` -> the 32-byte digest; ``ValueError`` otherwise."""
    m = _HASHED.match(value)
    if m is None:
        raise ValueError('expected "sha256:<64 hex digits>" (make one with python -m bascule_key_auth.hash)')
    return bytes.fromhex(m.group(1))


@dataclass(frozen=True)
class Credentials:
    """``[consumers.NAME.credentials.key-auth]``: this consumer's API keys, hashed.

    Only SHA-256 digests are stored; the keys themselves never appear in the
    config (several keys allow rotation without downtime).
    """

    keys: list[str] = setting(doc='Hashed keys: "sha256:<hex of SHA-256(key)>".')

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("keys: give at least one")
        for i, key in enumerate(self.keys):
            try:
                parse_hashed_key(key)
            except ValueError as e:
                raise ValueError(f"keys[{i}]: {e}") from None
