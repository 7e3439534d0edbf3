"""Settings of the ``key-auth`` plugin and its consumer credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bascule_sdk import TOKEN, ByteSize, HeaderName, setting

__all__ = ["Credentials", "Settings", "parse_hashed_key"]

_SCHEME = rf"^{TOKEN}$|^$"  # an RFC 9110 auth-scheme (a token), or '' (none)
_NO_QUOTES = r'^[^"\\]*$'  # a quoted-string's content, as we write it: no quote, no backslash
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class Settings:
    """``[routes.plugins.key-auth]``: where API keys are looked for, and what to do with them."""

    headers: list[HeaderName] = setting(["apikey", "X-API-Key"], "Request headers that may carry the key, in order.")
    query: list[str] = setting([], "Query parameters that may carry the key (off by default: URLs get logged).")
    hide_credentials: bool = setting(False, "Remove the key from the request before it is proxied.")
    anonymous: str = setting("", "Consumer name used when a request carries no key ('': 401).")
    max_key_size: ByteSize = setting(256, "Longer keys are rejected with 401 before hashing.", min=1)
    realm: str = setting(
        "bascule", "realm of the WWW-Authenticate challenge.", pattern=_NO_QUOTES, expected="no quotes or backslashes"
    )
    scheme: str = setting(
        "",
        "Also read the key from 'Authorization: <scheme> <key>', e.g. Bearer ('': no scheme, APIKey challenge).",
        pattern=_SCHEME,
        expected="an auth-scheme (an RFC 9110 token, e.g. Bearer) or ''",
    )

    def __post_init__(self) -> None:
        if not self.headers and not self.query and not self.scheme:
            raise ValueError("give at least one header or query parameter to read the key from")


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

    keys: list[str] = setting(doc='Hashed keys: "sha256:<hex of SHA-256(key)>".', min_items=1)

    def __post_init__(self) -> None:
        # Not a declared pattern: its message would quote the value, which may be a key pasted unhashed.
        for i, key in enumerate(self.keys):
            try:
                parse_hashed_key(key)
            except ValueError as e:
                raise ValueError(f"keys[{i}]: {e}") from None
