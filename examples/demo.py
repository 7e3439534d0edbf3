"""Run the demo: the services in ``services.py`` and the gateway on plugins.toml.

    python examples/demo.py [plugins.toml]

Stops both on Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    config = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "plugins.toml")
    services = subprocess.Popen([sys.executable, str(ROOT / "examples" / "services.py")])
    try:
        return subprocess.call([sys.executable, "-m", "bascule.cli", "run", "-c", config], cwd=ROOT)
    except KeyboardInterrupt:
        return 0
    finally:
        services.terminate()
        services.wait()


if __name__ == "__main__":
    sys.exit(main())
