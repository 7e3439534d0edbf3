"""Print the config form of an API key: ``python -m bascule_key_auth.hash <key>``.

With no argument, reads the key from standard input (so it stays out of the
shell history); ``--new`` generates a random key and prints both.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from collections.abc import Sequence

__all__ = ["hashed", "main"]


def hashed(key: str) -> str:
    """``"sha256:<hex>"``: what goes in ``[consumers.NAME.credentials.key-auth] keys``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bascule_key_auth.hash", description=__doc__.split("\n")[0])
    parser.add_argument("key", nargs="?", help="the API key (default: read from stdin)")
    parser.add_argument("--new", action="store_true", help="generate a random key")
    args = parser.parse_args(argv)
    if args.new:
        key = secrets.token_urlsafe(32)
        print(f"key:    {key}\nconfig: {hashed(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("error: empty key", file=sys.stderr)
        return 2
    print(hashed(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
