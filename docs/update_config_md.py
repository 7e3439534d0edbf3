"""Regenerate the reference tables of docs/config.md from the config dataclasses.

    python docs/update_config_md.py

Rewrites each block between ``<!-- BEGIN Model -->`` and ``<!-- END Model -->``
with ``bascule.schema.reference_table(Model)``; the prose and the examples
around them are written by hand. tests/test_docs.py fails while a table is out
of date or a key has no example.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bascule import config
from bascule.schema import reference_table

MODELS = (
    "GatewaySettings",
    "ServiceSettings",
    "TargetSettings",
    "RouteSettings",
    "WebSocketSettings",
    "ConsumerSettings",
)
DOC = Path(__file__).resolve().parent / "config.md"


def update(text: str) -> str:
    for name in MODELS:
        table = reference_table(getattr(config, name))
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
        text = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), text)
    return text


def main() -> int:
    old = DOC.read_text(encoding="utf-8")
    new = update(old)
    if new != old:
        DOC.write_text(new, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
